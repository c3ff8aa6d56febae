"""The gate in front of every provider call: the circuit breaker, then the rate limit.

``admit`` answers "go" or "hold back for N seconds, because ...". Short rate-limit waits
are slept through in the worker thread; longer ones, and an open circuit, send the
request back to wait without spending an attempt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from worker.gate.breaker import CircuitBreaker
from worker.gate.ratelimit import RateLimiter
from worker.metrics import BREAKER_STATE, RATE_LIMITED
from worker.providers.errors import ProviderError, RateLimited, TransientError

#: A rate-limit wait up to this long is slept through rather than re-queued.
MAX_INLINE_WAIT = 0.5
#: How long a "closed" answer from the breaker is trusted without asking Redis again.
CLOSED_CACHE_SECONDS = 0.5
#: After a failure seen here, successes are reported to reset the shared count.
RECENT_FAILURE_SECONDS = 120.0


@dataclass(frozen=True)
class Hold:
    seconds: float
    reason: str  # "circuit_open" | "rate_limited"


class ProviderGuard:
    def __init__(self, breaker: CircuitBreaker, limiter: RateLimiter) -> None:
        self.breaker = breaker
        self.limiter = limiter
        self._lock = threading.Lock()
        self._closed_until: dict[str, float] = {}
        self._failed_at: dict[str, float] = {}

    def admit(self, provider: str) -> Hold | None:
        """None when the call may go now; a ``Hold`` otherwise."""
        now = time.monotonic()
        with self._lock:
            trusted = self._closed_until.get(provider, 0.0) > now
        if not trusted:
            verdict = self.breaker.allow(provider)
            BREAKER_STATE.labels(provider).set(
                {"closed": 0, "open": 1, "half_open": 2}.get(verdict.state, 1))
            if not verdict.allowed:
                return Hold(max(verdict.wait_seconds, 0.05), "circuit_open")
            if verdict.state == "closed":
                with self._lock:
                    self._closed_until[provider] = now + CLOSED_CACHE_SECONDS
        while (wait := self.limiter.acquire(provider)) > 0:
            RATE_LIMITED.labels(provider, "local").inc()
            if wait > MAX_INLINE_WAIT:
                return Hold(wait, "rate_limited")
            time.sleep(wait)
        return None

    def record(self, provider: str, error: ProviderError | None) -> None:
        """Tell the breaker how the call went (429 is the rate limiter's business)."""
        now = time.monotonic()
        if isinstance(error, TransientError) and not isinstance(error, RateLimited):
            with self._lock:
                self._failed_at[provider] = now
                self._closed_until.pop(provider, None)
            state = self.breaker.failure(provider)
            BREAKER_STATE.labels(provider).set({"closed": 0, "open": 1}.get(state, 2))
            return
        if isinstance(error, RateLimited):
            RATE_LIMITED.labels(provider, "provider").inc()
        with self._lock:
            recent = now - self._failed_at.get(provider, -1e9) < RECENT_FAILURE_SECONDS
            # Not known to be closed right now (never seen, or the cache ran out): report
            # the success, which is what closes a half-open circuit after a probe.
            uncertain = self._closed_until.get(provider, 0.0) <= now
        if recent or uncertain:
            self.breaker.success(provider)
            with self._lock:
                self._closed_until[provider] = now + CLOSED_CACHE_SECONDS


def build_guard(client: redis.Redis, *, threshold: int, open_seconds: float,
                probe_seconds: float, rates: dict[str, float]) -> ProviderGuard:
    return ProviderGuard(
        CircuitBreaker(client, threshold=threshold, open_seconds=open_seconds,
                       probe_seconds=probe_seconds),
        RateLimiter(client, rates),
    )
