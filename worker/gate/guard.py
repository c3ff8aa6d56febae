"""The gate in front of every provider call: the circuit breaker, then the rate limit.

``admit`` answers "go" or "hold back for N seconds, because ...". Short rate-limit waits
are slept through in the worker thread (the slot is booked first); a longer one holds a
slot for the request, and it, like an open circuit, sends the request to wait without
spending an attempt: parked in Redis (``worker.gate.parking``) when the guard has a
parking lot, else back through the queue with a countdown.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from worker.gate.breaker import CircuitBreaker
from worker.gate.parking import ParkingLot
from worker.gate.ratelimit import RateLimiter
from worker.metrics import BREAKER_STATE, RATE_LIMITED
from worker.providers.errors import ProviderError, RateLimited, TransientError

#: A rate-limit wait up to this long is slept through rather than parked.
MAX_INLINE_WAIT = 0.5
#: How long a "closed" answer from the breaker is trusted without asking Redis again.
CLOSED_CACHE_SECONDS = 0.5
#: After a failure seen here, successes are reported to reset the shared count.
RECENT_FAILURE_SECONDS = 120.0


@dataclass(frozen=True)
class Hold:
    seconds: float
    reason: str  # "circuit_open" | "rate_limited"
    #: A rate-limit slot ``seconds`` ahead is held for the request: it comes back for it.
    reserved: bool = False


class ProviderGuard:
    def __init__(self, breaker: CircuitBreaker, limiter: RateLimiter,
                 parking: ParkingLot | None = None) -> None:
        self.breaker = breaker
        self.limiter = limiter
        #: Where held requests wait (None: back through the queue, with a countdown).
        self.parking = parking
        self._lock = threading.Lock()
        self._closed_until: dict[str, float] = {}
        self._failed_at: dict[str, float] = {}

    def admit(self, provider: str, request_id: str) -> Hold | None:
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
        ticket = self.limiter.take(provider, request_id)
        if ticket.held:
            RATE_LIMITED.labels(provider, "local").inc()
            return Hold(ticket.wait, "rate_limited", reserved=True)
        if ticket.wait > 0:
            time.sleep(ticket.wait)  # the slot is booked: go at it
        while (wait := self.limiter.send(provider, request_id)) > 0:
            time.sleep(wait)  # calls that went late filled the window: a few ms
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
                probe_seconds: float, rates: dict[str, float], margin: float = 0.08,
                park: bool = False) -> ProviderGuard:
    """The guard of one worker process; ``park``: held requests wait in Redis."""
    return ProviderGuard(
        CircuitBreaker(client, threshold=threshold, open_seconds=open_seconds,
                       probe_seconds=probe_seconds),
        RateLimiter(client, rates, margin=margin, inline_seconds=MAX_INLINE_WAIT),
        ParkingLot(client) if park else None,
    )
