"""A request-rate limit per provider, shared by all workers through Redis (GCRA).

Celery's own ``rate_limit`` counts per worker instance; a provider's limit is per
account, so the count must be shared. ``lua/ratelimit.lua`` books a slot atomically
and answers how long to wait when there is none.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis

from worker import keys, scripts


def key(provider: str) -> str:
    return keys.ratelimit(provider)


class RateLimiter:
    """Parameters:
        client: Redis (``decode_responses=True``).
        rates: requests per second per provider; providers absent (or 0) are not limited.
        burst_seconds: how far ahead of the steady rate a burst may run.

    Examples:
        >>> limiter = RateLimiter(client, {"jumio": 15.0})     # doctest: +SKIP
        >>> limiter.acquire("jumio")                           # doctest: +SKIP
        0.0
    """

    def __init__(self, client: redis.Redis, rates: Mapping[str, float],
                 burst_seconds: float = 1.0) -> None:
        self._script = scripts.script(client, "ratelimit")
        self.rates = {p: r for p, r in rates.items() if r > 0}
        self.burst_seconds = burst_seconds

    def acquire(self, provider: str) -> float:
        """Book one call now; returns 0, or the seconds to wait when over the limit."""
        rate = self.rates.get(provider)
        if rate is None:
            return 0.0
        interval_ms = 1000.0 / rate
        burst_ms = max(0.0, self.burst_seconds * 1000.0 - interval_ms)
        wait_ms = self._script(keys=[key(provider)], args=[f"{interval_ms:.3f}",
                                                           f"{burst_ms:.3f}"])
        return float(wait_ms) / 1000.0
