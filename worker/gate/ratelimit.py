"""A request-rate limit per provider, shared by all workers through Redis: strict at the
provider (``lua/ratelimit.lua``).

Celery's own ``rate_limit`` counts per worker instance; a provider's limit is per
account, so the count must be shared. A per-second limit is a per-second limit, so two
parts, both in Redis:

- the schedule (GCRA without burst): ``take`` books a slot, one ``interval`` after the
  last; a slot within ``inline_seconds`` is slept to, a later one is *held* for the
  request (``Ticket.held``): it is parked (``worker.gate.parking``) and, back for its
  slot, goes without booking again. The backlog is served in the order it booked.
- the gate: ``send``, just before the HTTP call, lets a call through only while fewer
  than ``most`` calls were sent in the last ``window``, and says how long to wait
  otherwise. Calls that went late (a worker stalled, a request back after its slot)
  can therefore never bunch up with those on time.

``window`` is ``most / rate`` seconds plus ``margin`` (0.08: 80 ms more): the time a
call may take from the gate to the provider (waking up, the HTTP send) without
``most + 1`` calls landing within ``most / rate`` there. At ``most = rate`` (any rate of
1/s or more, rounded down) that is "never ``rate + 1`` calls in any one-second window".
The price is throughput: at most ``most / window`` calls a second (20/s: 18.5/s, 92.6 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from worker import keys, scripts

#: A held slot is kept this long past its time (then it expires: the request books anew).
HELD_SLOT_KEEP_MS = 600_000


def key(provider: str) -> str:
    return keys.ratelimit(provider)


@dataclass(frozen=True)
class Ticket:
    """The schedule's answer: go after ``wait`` seconds (``held`` False: the slot is
    booked, sleep and go), or come back for the slot held ``wait`` seconds ahead."""

    wait: float = 0.0
    held: bool = False


@dataclass(frozen=True)
class Slots:
    """Consecutive slots booked at once for parked requests: ``count`` of them, the
    first at ``first_ms`` (Redis time), ``interval_ms`` apart."""

    first_ms: float
    interval_ms: float
    count: int


@dataclass(frozen=True)
class Pace:
    """One provider's limit: at most ``most`` calls within any ``window_ms``; slots
    ``interval_ms`` apart (``window_ms / most``)."""

    most: int
    window_ms: float

    @property
    def interval_ms(self) -> float:
        return self.window_ms / self.most

    @classmethod
    def of(cls, rate: float, margin: float) -> Pace:
        """Examples:
            >>> Pace.of(20, 0.08)
            Pace(most=20, window_ms=1080.0)
            >>> round(Pace.of(0.5, 0.08).interval_ms)
            2080
        """
        most = max(1, math.floor(rate))
        return cls(most, 1000.0 * most / rate + 1000.0 * margin)


class RateLimiter:
    """Parameters:
        client: Redis (``decode_responses=True``).
        rates: requests per second per provider; providers absent (or 0) are not limited.
        margin: seconds added to each window (see the module docstring).
        inline_seconds: a wait up to this long is slept through; a longer one is held.

    Examples:
        >>> limiter = RateLimiter(client, {"jumio": 15.0})     # doctest: +SKIP
        >>> limiter.take("jumio", "r-1")                       # doctest: +SKIP
        Ticket(wait=0.0, held=False)
        >>> limiter.send("jumio", "r-1")                       # doctest: +SKIP
        0.0
    """

    def __init__(self, client: redis.Redis, rates: Mapping[str, float], *,
                 margin: float = 0.08, inline_seconds: float = 0.5) -> None:
        self._script = scripts.script(client, "ratelimit")
        self.paces = {p: Pace.of(r, margin) for p, r in rates.items() if r > 0}
        self.inline_ms = inline_seconds * 1000.0

    def interval_ms(self, provider: str) -> float | None:
        pace = self.paces.get(provider)
        return None if pace is None else pace.interval_ms

    def take(self, provider: str, request_id: str) -> Ticket:
        """Book a slot now (or soon), or hold a later one for ``request_id``; a slot held
        for it earlier is used instead of booking again."""
        pace = self.paces.get(provider)
        if pace is None:
            return Ticket()
        wait_ms, held = self._script(
            keys=[key(provider), keys.ratelimit_slot(provider, request_id)],
            args=["take", f"{pace.interval_ms:.3f}", f"{self.inline_ms:.0f}",
                  str(HELD_SLOT_KEEP_MS)])
        return Ticket(int(wait_ms) / 1000.0, bool(int(held)))

    def send(self, provider: str, request_id: str) -> float:
        """Just before the call: 0 when it may go now (it is logged as sent), else the
        seconds until the window has room."""
        pace = self.paces.get(provider)
        if pace is None:
            return 0.0
        wait_ms = self._script(keys=[key(provider), key(provider),
                                     keys.ratelimit_sent(provider)],
                               args=["send", f"{pace.window_ms:.3f}", str(pace.most),
                                     request_id])
        return int(wait_ms) / 1000.0

    def reserve(self, provider: str, most: int, horizon_seconds: float) -> Slots | None:
        """Book up to ``most`` consecutive slots that begin within ``horizon_seconds``
        (None: the provider is not limited)."""
        pace = self.paces.get(provider)
        if pace is None:
            return None
        first, count = self._script(keys=[key(provider), key(provider), key(provider)], args=[
            "reserve", f"{pace.interval_ms:.3f}", str(most), f"{horizon_seconds * 1000:.0f}"])
        return Slots(float(first), pace.interval_ms, int(count))
