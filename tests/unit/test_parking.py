"""The strict rate limiter and the parking lot's scripts (``lua/ratelimit.lua``,
``lua/park.lua``, ``lua/release.lua``) on fakeredis: fast checks of each decision.
The same behaviours with real workers and a real Redis: tests/reliability/test_parking.py."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, cast

import fakeredis
import httpx
import pytest

from config.settings import Settings
from worker import keys
from worker.delivery.pipeline import Finished, Pipeline, RetryLater
from worker.gate.breaker import CircuitBreaker
from worker.gate.guard import ProviderGuard
from worker.gate.parking import RELEASE_LEAD_SECONDS, Parked, ParkingLot
from worker.gate.ratelimit import RateLimiter
from worker.journal.steps import Journal
from worker.providers.idpass import IdPassAdapter

REQUEST = json.dumps({"request_id": "r-1", "provider": "txcloud"})


@pytest.fixture
def limiter(fake_redis: fakeredis.FakeRedis) -> RateLimiter:
    return RateLimiter(fake_redis, {"txcloud": 20.0}, margin=0.08, inline_seconds=0.5)


@pytest.fixture
def lot(fake_redis: fakeredis.FakeRedis) -> ParkingLot:
    return ParkingLot(fake_redis)


def now_ms(client: fakeredis.FakeRedis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


def test_the_limiter_books_slots_one_interval_apart_with_no_burst(
        limiter: RateLimiter, fake_redis: fakeredis.FakeRedis) -> None:
    """Given a 20/s limit and nothing booked
    When 40 requests ask at once
    Then one goes now, the next ones wait one interval (54 ms) more each: no burst;
    those within half a second sleep, the rest get a slot held for them."""
    started = time.monotonic()
    tickets = [limiter.take("txcloud", f"r-{i}") for i in range(40)]
    elapsed = time.monotonic() - started
    waits = [t.wait for t in tickets]
    assert waits[0] == 0.0
    # the 40th slot is 39 intervals after the first, whatever time the calls took
    assert waits[-1] + elapsed >= 39 * 0.054 - 0.002
    slots = [float(v) for i in range(40)
             if (v := fake_redis.get(keys.ratelimit_slot("txcloud", f"r-{i}"))) is not None]
    assert slots and all(b - a == pytest.approx(54, abs=0.1)
                         for a, b in itertools.pairwise(slots))
    assert [t.held for t in tickets] == [w > 0.5 for w in waits]


def test_a_request_back_for_its_held_slot_goes_without_booking_again(
        limiter: RateLimiter, fake_redis: fakeredis.FakeRedis) -> None:
    """Given r-39 holds a slot two seconds ahead, r-38 one a second past
    When each comes back (r-39 at its slot)
    Then both go at once and the schedule does not move: a late one is not punished (the
    gate, not the schedule, keeps late calls from bunching)."""
    for i in range(40):
        limiter.take("txcloud", f"r-{i}")
    held_key = keys.ratelimit_slot("txcloud", "r-39")
    assert fake_redis.exists(held_key)
    tat = fake_redis.get(keys.ratelimit("txcloud"))
    fake_redis.set(held_key, str(now_ms(fake_redis)))
    fake_redis.set(keys.ratelimit_slot("txcloud", "r-38"), str(now_ms(fake_redis) - 1000))
    back = [limiter.take("txcloud", "r-39"), limiter.take("txcloud", "r-38")]
    assert [(t.held, t.wait <= 0.002) for t in back] == [(False, True)] * 2
    assert fake_redis.get(keys.ratelimit("txcloud")) == tat and not fake_redis.exists(held_key)


def test_the_gate_never_lets_rate_plus_one_calls_through_in_a_window(
        limiter: RateLimiter) -> None:
    """Given a 20/s limit (window 1.08 s)
    When 25 calls that went late all reach the gate at once
    Then 20 go, and the 21st is told to wait until the first leaves the window."""
    started = time.monotonic()
    waits = [limiter.send("txcloud", f"r-{i}") for i in range(25)]
    elapsed = time.monotonic() - started
    assert waits[:20] == [0.0] * 20
    assert all(1.08 - elapsed - 0.01 <= w <= 1.09 for w in waits[20:]), waits[20:]


def test_early_back_keeps_its_slot(limiter: RateLimiter, fake_redis: fakeredis.FakeRedis
                                   ) -> None:
    """Given r-39 holds a slot about 2 s ahead / When it comes back now / Then it is told to
    wait for the same slot, and nothing new is booked."""
    for i in range(40):
        limiter.take("txcloud", f"r-{i}")
    tat = fake_redis.get(keys.ratelimit("txcloud"))
    again = limiter.take("txcloud", "r-39")
    assert again.held and again.wait > 1.5
    assert fake_redis.get(keys.ratelimit("txcloud")) == tat


def test_reserve_books_consecutive_slots_within_the_horizon(limiter: RateLimiter) -> None:
    """Given nothing booked / When 100 slots are asked within 2 s / Then 38 come (2 s at 54 ms),
    one interval apart, and a provider without a limit gets None."""
    slots = limiter.reserve("txcloud", 100, 2.0)
    assert slots is not None and slots.count == 38 and slots.interval_ms == pytest.approx(54)
    assert limiter.reserve("idpass", 100, 2.0) is None


def test_a_parked_request_is_claimed_once_and_forgotten_when_confirmed(
        lot: ParkingLot, fake_redis: fakeredis.FakeRedis) -> None:
    """Given a request parked until now
    When two releasers claim / Then only the first gets it; confirmed, it is gone and counted."""
    lot.hold("txcloud", "r-1", REQUEST, 0)
    first = lot.claim("txcloud", 10, 30, 5)
    second = lot.claim("txcloud", 10, 30, 5)
    assert first.entries == [("r-1", REQUEST)] and second.entries == []
    assert lot.confirm("txcloud", ["r-1"]) == 1
    assert not fake_redis.hexists(keys.HELD_REQUESTS, "r-1")
    assert fake_redis.hget(keys.HELD_STATS, "released:txcloud") == "1"
    assert lot.depth("txcloud") == {"timed": 0, "breaker": 0, "releasing": 0}


def test_a_claim_whose_releaser_died_is_claimed_again(lot: ParkingLot) -> None:
    """Given a releaser claimed r-1 with a lease that has run out and never confirmed
    When another releaser looks / Then it gets r-1 (nothing lost)."""
    lot.hold("txcloud", "r-1", REQUEST, 0)
    assert lot.claim("txcloud", 10, 0, 5).entries  # lease 0: over at once
    time.sleep(0.002)
    assert lot.claim("txcloud", 10, 30, 5).entries == [("r-1", REQUEST)]


def test_a_request_parked_again_before_its_release_is_confirmed_keeps_its_json(
        lot: ParkingLot, fake_redis: fakeredis.FakeRedis) -> None:
    """Given r-1 was claimed and published, and its new delivery parked it again
    When the releaser confirms / Then the new entry and its JSON stay."""
    lot.hold("txcloud", "r-1", REQUEST, 0)
    lot.claim("txcloud", 10, 30, 5)
    lot.hold("txcloud", "r-1", REQUEST, 60)
    assert lot.confirm("txcloud", ["r-1"]) == 0
    assert fake_redis.hexists(keys.HELD_REQUESTS, "r-1")
    assert lot.depth("txcloud")["timed"] == 1


def test_a_copy_of_a_parked_request_is_not_parked_twice(lot: ParkingLot) -> None:
    """Given r-1 is parked / When a copy of it defers / Then it is not needed (False);
    a copy of a request not parked is (True)."""
    lot.hold("txcloud", "r-1", REQUEST, 60)
    assert lot.defer("txcloud", "r-1", REQUEST, 5) is False
    assert lot.defer("txcloud", "r-2", REQUEST, 5) is True


def test_an_open_circuit_releases_one_random_probe_per_probe_time(
        lot: ParkingLot, fake_redis: fakeredis.FakeRedis) -> None:
    """Given 50 requests wait on an open circuit whose open time is over
    When releasers look three times / Then exactly one request goes, as the probe."""
    for i in range(50):
        lot.wait_for_breaker("txcloud", f"r-{i}", REQUEST, time.time() + 3600)
    fake_redis.hset(keys.breaker("txcloud"), mapping={"state": "open", "open_until": 0})
    claimed = [lot.claim("txcloud", 100, 30, 5) for _ in range(3)]
    assert sum(len(c.entries) for c in claimed) == 1
    assert claimed[-1].breaker == "open" and claimed[-1].waiting == 49


def test_a_still_open_circuit_releases_nothing_but_the_past_deadline(
        lot: ParkingLot, fake_redis: fakeredis.FakeRedis) -> None:
    """Given the circuit is open for another minute, r-old past its retry deadline
    When the releaser looks / Then r-old alone is released (the pipeline ends it)."""
    fake_redis.hset(keys.breaker("txcloud"), mapping={
        "state": "open", "open_until": now_ms(fake_redis) + 60_000})
    lot.wait_for_breaker("txcloud", "r-old", REQUEST, time.time() - 1)
    lot.wait_for_breaker("txcloud", "r-new", REQUEST, time.time() + 3600)
    assert [rid for rid, _ in lot.claim("txcloud", 100, 30, 5).entries] == ["r-old"]


def test_once_the_circuit_closes_waiting_requests_get_slots_at_the_limiters_pace(
        lot: ParkingLot, limiter: RateLimiter, fake_redis: fakeredis.FakeRedis) -> None:
    """Given 100 requests wait on a circuit that has closed
    When the releaser promotes them with 2 s of slots
    Then 38 become timed entries, each holding its own slot, released just before it."""
    for i in range(100):
        lot.wait_for_breaker("txcloud", f"r-{i:03d}", REQUEST, time.time() + 3600 + i)
    slots = limiter.reserve("txcloud", 100, 2.0)
    assert slots is not None
    assert lot.promote("txcloud", slots, slots.count) == 38
    assert lot.depth("txcloud") == {"timed": 38, "breaker": 62, "releasing": 0}
    first = float(fake_redis.get(keys.ratelimit_slot("txcloud", "r-000")) or 0)
    second = float(fake_redis.get(keys.ratelimit_slot("txcloud", "r-001")) or 0)
    assert second - first == pytest.approx(54, abs=0.01)
    last = float(fake_redis.get(keys.ratelimit_slot("txcloud", "r-037")) or 0)
    assert last - first == pytest.approx(37 * 54, abs=0.01)
    score = fake_redis.zscore(keys.held("txcloud"), "r-037")
    assert score == pytest.approx(last - RELEASE_LEAD_SECONDS * 1000, abs=1)


def test_status_tells_where_a_parked_request_waits(lot: ParkingLot) -> None:
    """Given r-1 parked for a minute and r-2 on the breaker / When asked where they wait /
    Then each answer names its provider and the set; an unknown id answers None."""
    lot.hold("txcloud", "r-1", REQUEST, 60)
    lot.wait_for_breaker("txcloud", "r-2", REQUEST, 2_000_000_000.0)
    timed, breaker = lot.where("r-1"), lot.where("r-2")
    assert timed is not None and timed["waits"] == "timed" and timed["provider"] == "txcloud"
    assert breaker == {"provider": "txcloud", "waits": "breaker", "until": 2_000_000_000.0}
    assert lot.where("r-3") is None


def _pipeline(client: fakeredis.FakeRedis) -> Any:
    settings = Settings(idpass_base_url="http://idpass.test", idpass_token="tok",
                        retry_cap_seconds=5, lease_seconds=30)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": False})

    adapter = IdPassAdapter(settings, transport=httpx.MockTransport(answer))
    guard = ProviderGuard(CircuitBreaker(client, threshold=5, open_seconds=30,
                                         probe_seconds=15),
                          RateLimiter(client, {"idpass": 1.0}), ParkingLot(client))
    return Pipeline(settings, Journal(client), adapters=lambda *_: adapter, guard=guard)


def _request(n: int) -> dict[str, str]:
    return {"request_id": f"r-{n}", "provider": "idpass", "action": "cancel",
            "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95", "requested_by": "tests"}


def test_a_held_request_is_parked_once_and_a_copy_of_it_adds_nothing(
        fake_redis: fakeredis.FakeRedis) -> None:
    """Given ID Pass limited to 1 call a second and r-1 just called
    When r-2 arrives, then a copy of r-2
    Then r-2 is parked (ledger waiting, a retry_scheduled record, its entry with the
    slot held for it) and its message acked; the copy parks nothing (one entry per
    request) and goes back through the queue, to be answered on the record (a
    ``duplicate`` step) once r-2 is done: never dropped."""
    pipeline = _pipeline(fake_redis)
    assert pipeline.handle([_request(1)], {}, "t-1") == Finished("cancelled")
    assert pipeline.handle([_request(2)], {}, "t-2") == Parked()
    assert fake_redis.hget("idvcancel:req:r-2", "phase") == "waiting"
    assert fake_redis.zcard(keys.held("idpass")) == 1
    assert fake_redis.exists(keys.ratelimit_slot("idpass", "r-2"))
    entries = cast("list[tuple[str, dict[str, str]]]", fake_redis.xrange("idvcancel:audit"))
    records = [json.loads(fields["record"]) for _, fields in entries]
    assert [r["error"] for r in records if r["step"] == "retry_scheduled"] == ["rate_limited"]
    copy = pipeline.handle([_request(2)], {}, "t-3")
    assert isinstance(copy, RetryLater)
    assert fake_redis.zcard(keys.held("idpass")) == 1
    assert fake_redis.xlen("idvcancel:results") == 1  # r-1's only
