"""The one way idv-cancel connects to Redis: the same timeouts, reconnection and decoding
everywhere, so a slow or restarting Redis looks the same to every part of the worker.

- ``redis_client(url)``: for the state store. Rides out short blips (a few retries with
  backoff on connection errors and timeouts), answers text (``decode_responses``).
- ``redis_client(url, decode=False)``: the same, answering bytes (the producer pushes
  bytes it built itself).
- ``probe_client(url)``: for health checks: no retries and a 1 s timeout (or the one
  given), so a probe says "unhealthy" at once instead of hanging while Redis is away.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def redis_client(url: str, *, decode: bool = True) -> redis.Redis:
    """A client that rides out short connection blips."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def probe_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client for health probes: one try, ``timeout`` seconds to connect and to answer."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
