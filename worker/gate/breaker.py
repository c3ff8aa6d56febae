"""A circuit breaker per provider, shared by all workers through Redis.

After ``threshold`` consecutive transient failures (5xx, timeouts, connection errors)
the circuit opens: no call goes to that provider for ``open_seconds``; then one probe is
let through. Its success closes the circuit, its failure opens it again. Requests held
back are not failed: they wait (without spending attempts) and the other providers'
requests flow on. State lives in ``idvcancel:breaker:<provider>`` (``lua/breaker.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker import keys, scripts

STATES = ("closed", "open", "half_open")


def key(provider: str) -> str:
    return keys.breaker(provider)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    state: str
    wait_seconds: float = 0.0


class CircuitBreaker:
    """Parameters:
        client: Redis (``decode_responses=True``).
        threshold: consecutive transient failures that open the circuit.
        open_seconds: how long it stays open before one probe goes through.
        probe_seconds: how long a probe may take before another is let through.
    """

    def __init__(self, client: redis.Redis, *, threshold: int, open_seconds: float,
                 probe_seconds: float) -> None:
        self._client = client
        self._script = scripts.script(client, "breaker")
        self._args = [str(threshold), str(int(open_seconds * 1000)),
                      str(int(probe_seconds * 1000))]

    def allow(self, provider: str) -> Verdict:
        reply = self._script(keys=[key(provider)], args=["allow", *self._args])
        if int(reply[0]) == 1:
            return Verdict(True, str(reply[1]))
        return Verdict(False, str(reply[1]), int(reply[2]) / 1000)

    def state(self, provider: str) -> str:
        """The circuit's state as stored, without asking to go (no probe is taken)."""
        return str(self._client.hget(key(provider), "state") or "closed")

    def success(self, provider: str) -> None:
        self._script(keys=[key(provider)], args=["success", *self._args])

    def failure(self, provider: str) -> str:
        """Count a transient failure; returns the state after it."""
        return str(self._script(keys=[key(provider)], args=["failure", *self._args])[1])
