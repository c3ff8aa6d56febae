"""Where held requests wait: parked in Redis, not in a worker slot and not in the queue.

A request the rate limit or the circuit breaker holds back used to go back through the
queue with a countdown (on Redis an ETA message held un-acked in a worker's memory; each
wait one more publish), and short waits slept in a worker thread. Behind a backlog at
one provider, every other provider's requests then waited in the same first-in,
first-out queue. Now the held request's message is acked and the request is *parked*
(``lua/park.lua``), one entry per request id:

- ``idvcancel:held:<p>``: released at a time. A rate-limit hold comes with a slot the
  limiter holds for the request (``worker.gate.ratelimit``): it is released
  ``RELEASE_LEAD_SECONDS`` before its slot and, back in a worker, sleeps to the slot and
  calls without booking again. A copy of a request busy elsewhere (another delivery's
  lease, a retry not yet due) waits here too, unless the request is parked already.
- ``idvcancel:held:<p>:breaker``: waiting for the circuit to close, oldest retry deadline
  first. While the circuit is open one entry at a time is released as its probe; once
  it has closed, the entries get slots at the limiter's pace and move to the timed set
  (``promote``); an entry past its retry deadline is released so that the pipeline ends
  it (``failed``, dead-lettered).

The releaser (``worker.triggers.release``, a thread in every worker process) claims
due entries with ``lua/release.lua`` under a lease and publishes them again. The ledger
says ``waiting`` with ``not_before`` the release time, and the audit has the
``retry_scheduled`` record, as for any wait.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

from worker import keys, scripts
from worker.gate.ratelimit import HELD_SLOT_KEEP_MS, Slots

#: A request holding a slot is released this long before it (less than the inline wait:
#: it sleeps the rest in the worker), so that the trip through the queue is not late.
RELEASE_LEAD_SECONDS = 0.3
#: A timed entry may be released this much before its time (the releaser takes those
#: due soon together): its ledger's ``not_before`` is set that much earlier, so the
#: delivery released early is not sent to wait again.
RELEASE_EARLY_SECONDS = 0.1


@dataclass(frozen=True)
class Parked:
    """The pipeline's step for a request left parked (the message is acked)."""

    outcome: str = "parked"


@dataclass(frozen=True)
class Claim:
    """What one ``claim`` found for a provider.

    Parameters:
        entries: (request id, request JSON) to publish, now.
        breaker: the circuit's state (``closed``, ``open``, ``half_open``).
        waiting: entries still waiting for the circuit to close.
        next_due: seconds until the next timed entry (or lease) is due; None: none.
    """

    entries: list[tuple[str, str]] = field(default_factory=list)
    breaker: str = "closed"
    waiting: int = 0
    next_due: float | None = None


def _keys(provider: str) -> list[str]:
    return [keys.held(provider), keys.held_breaker(provider), keys.held_claimed(provider),
            keys.HELD_REQUESTS]


class ParkingLot:
    """The parked requests of every provider (``lua/park.lua``, ``lua/release.lua``).

    Parameters:
        client: Redis (``decode_responses=True``), the state store.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._park = scripts.script(client, "park")
        self._release = scripts.script(client, "release")

    # -- parking (the pipeline) --------------------------------------------------------
    def hold(self, provider: str, request_id: str, request_json: str, seconds: float) -> None:
        """Park until ``seconds`` from now."""
        self._park(keys=_keys(provider), args=["hold", request_id, request_json, "timed",
                                               f"{max(0.0, seconds) * 1000:.0f}"])

    def wait_for_breaker(self, provider: str, request_id: str, request_json: str,
                         deadline: float) -> None:
        """Park until the circuit closes (or the probe, or ``deadline``, epoch seconds)."""
        self._park(keys=_keys(provider), args=["hold", request_id, request_json, "breaker",
                                               f"{deadline * 1000:.0f}"])

    def defer(self, provider: str, request_id: str, request_json: str, seconds: float
              ) -> bool:
        """Park a copy of a request busy elsewhere for ``seconds``; False when the
        request is parked already (this copy is not needed)."""
        return bool(self._park(keys=_keys(provider), args=[
            "defer", request_id, request_json, f"{max(0.0, seconds) * 1000:.0f}"]))

    # -- releasing (worker.triggers.release) ---------------------------------------
    def claim(self, provider: str, most: int, lease_seconds: float,
              probe_seconds: float, early_seconds: float = 0.0) -> Claim:
        """Claim the entries due now (timed ones due within ``early_seconds``), under a
        lease (``confirm`` once published)."""
        flat, state, waiting, next_ms = self._release(
            keys=[*_keys(provider), keys.breaker(provider), keys.held_probe(provider),
                  keys.HELD_STATS],
            args=["claim", str(most), f"{lease_seconds * 1000:.0f}",
                  f"{probe_seconds * 1000:.0f}", f"{early_seconds * 1000:.0f}"])
        pairs = [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]
        due = None if int(next_ms) < 0 else int(next_ms) / 1000.0
        return Claim(pairs, str(state), int(waiting), due)

    def confirm(self, provider: str, request_ids: list[str]) -> int:
        """End the claims of entries published; returns how many were still claimed."""
        if not request_ids:
            return 0
        return int(self._release(
            keys=[*_keys(provider), keys.breaker(provider), keys.held_probe(provider),
                  keys.HELD_STATS],
            args=["confirm", f"released:{provider}", *request_ids]))

    def promote(self, provider: str, slots: Slots | None, count: int) -> int:
        """The circuit has closed: give the oldest ``count`` entries waiting on it the
        ``slots`` booked for them (None: no rate limit, all due now) and release each
        ``RELEASE_LEAD_SECONDS`` before its slot."""
        first, interval, prefix = (
            (slots.first_ms, slots.interval_ms, keys.ratelimit_slot_prefix(provider))
            if slots is not None else (0.0, 0.0, ""))
        if count <= 0:
            return 0
        return int(self._park(keys=_keys(provider), args=[
            "promote", f"{first:.3f}", f"{interval:.3f}", str(count),
            f"{RELEASE_LEAD_SECONDS * 1000:.0f}", prefix, str(HELD_SLOT_KEEP_MS)]))

    def where(self, request_id: str) -> dict[str, object] | None:
        """Where a parked request waits (for ``idvcancel status``), or None."""
        text = self.client.hget(keys.HELD_REQUESTS, request_id)
        if text is None:
            return None
        provider = str(json.loads(str(text)).get("provider"))
        for name, key in (("timed", keys.held(provider)),
                          ("breaker", keys.held_breaker(provider)),
                          ("releasing", keys.held_claimed(provider))):
            score = self.client.zscore(key, request_id)
            if score is not None:
                # timed: when it is released; breaker: its retry deadline; releasing:
                # when its release's lease ends
                return {"provider": provider, "waits": name, "until": float(score) / 1000}
        return {"provider": provider, "waits": "released"}

    def depth(self, provider: str) -> dict[str, int]:
        """How many requests are parked for ``provider``, by where they wait."""
        pipe = self.client.pipeline(transaction=False)
        for key in _keys(provider)[:3]:
            pipe.zcard(key)
        timed, breaker, claimed = pipe.execute()
        return {"timed": int(timed), "breaker": int(breaker), "releasing": int(claimed)}
