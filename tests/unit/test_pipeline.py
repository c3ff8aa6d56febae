"""The pipeline's decisions, on fakeredis and a mock transport (fast; no processes).

The same behaviours are proven against a real Redis and real workers in
tests/integration; these pin the state machine down step by step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import fakeredis
import httpx
import pytest

from config.settings import Settings
from worker.contract import CancelRequest
from worker.delivery.pipeline import Finished, Pipeline, RetryLater
from worker.journal import ledger
from worker.journal.steps import Journal
from worker.journal.verify import verify_stream
from worker.providers.idpass import IdPassAdapter

REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"
REQUEST = {"request_id": "r-1", "provider": "idpass", "action": "cancel", "reference": REF,
           "requested_by": "tests"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Provider:
    """A scripted ID Pass: answers from ``script`` in order, then 200."""

    def __init__(self, *script: int, status: str = "new") -> None:
        self.script = list(script)
        self.status = status
        self.cancels = 0
        self.reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/details"):
            self.reads += 1
            return httpx.Response(200, json={"status": self.status})
        self.cancels += 1
        if self.script:
            return httpx.Response(self.script.pop(0), json={"error": "scripted"},
                                  headers={"Retry-After": "3"})
        self.status = "cancelled"
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": False})


Setup = Callable[..., tuple[Pipeline, Provider, Clock]]


@pytest.fixture
def setup(fake_redis: fakeredis.FakeRedis) -> Setup:
    def build(*script: int, attempts: int = 3, status: str = "new") -> tuple[
            Pipeline, Provider, Clock]:
        settings = Settings(idpass_base_url="http://idpass.test", idpass_token="tok",
                            retry_max_attempts=attempts, retry_base_seconds=1,
                            retry_cap_seconds=5, lease_seconds=30)
        provider = Provider(*script, status=status)
        adapter = IdPassAdapter(settings, transport=httpx.MockTransport(provider))
        clock = Clock()
        pipeline = Pipeline(settings, Journal(fake_redis), adapters=lambda *_: adapter,
                            clock=clock)
        return pipeline, provider, clock
    return build


def entries(client: fakeredis.FakeRedis, stream: str) -> list[tuple[str, dict[str, str]]]:
    return cast("list[tuple[str, dict[str, str]]]", client.xrange(stream))


def events(client: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return [json.loads(f["event"]) for _, f in entries(client, "idvcancel:results")]


def steps(client: fakeredis.FakeRedis) -> list[str]:
    return [json.loads(f["record"])["step"] for _, f in entries(client, "idvcancel:audit")]


def test_transient_failures_are_retried_then_succeed(setup: Setup,
                                                     fake_redis: fakeredis.FakeRedis) -> None:
    # Given a provider that answers 503 once, then succeeds
    pipeline, _provider, clock = setup(503)
    # When the first delivery runs
    first = pipeline.handle([REQUEST], {}, "t-1")
    # Then a retry is scheduled within the cap, and no result yet
    assert isinstance(first, RetryLater) and 0 <= first.countdown <= 5
    assert events(fake_redis) == []
    # When the retry arrives after the delay
    clock.now += first.countdown + 0.01
    second = pipeline.handle([REQUEST], {}, "t-1")
    # Then it is cancelled after two attempts, with one result event
    assert second == Finished("cancelled")
    (event,) = events(fake_redis)
    assert event["attempts"] == 2 and event["http_status"] == 200
    assert steps(fake_redis) == ["received", "attempt", "retry_scheduled", "attempt",
                                 "completed"]


def test_a_delivery_that_comes_before_retry_after_waits(setup: Setup) -> None:
    # Given a 429 asking for 3 s
    pipeline, provider, clock = setup(429)
    first = pipeline.handle([REQUEST], {}, "t-1")
    assert isinstance(first, RetryLater) and first.countdown >= 3
    # When a duplicate arrives one second later / Then it is deferred, no call is made
    clock.now += 1
    assert isinstance(pipeline.handle([REQUEST], {}, "t-2"), RetryLater)
    assert provider.cancels == 1


def test_exhausted_budget_fails_and_dead_letters(setup: Setup,
                                                 fake_redis: fakeredis.FakeRedis) -> None:
    pipeline, provider, clock = setup(503, 503, 503, attempts=3)
    step = pipeline.handle([REQUEST], {}, "t-1")
    while isinstance(step, RetryLater):
        clock.now += step.countdown + 0.01
        step = pipeline.handle([REQUEST], {}, "t-1")
    assert step == Finished("failed") and provider.cancels == 3
    (event,) = events(fake_redis)
    assert event["outcome"] == "failed" and event["attempts"] == 3
    entry = json.loads(fake_redis.hget("idvcancel:dlq", "r-1") or "{}")
    assert entry["request"]["reference"] == REF and entry["outcome"] == "failed"
    assert steps(fake_redis)[-1] == "dead_lettered"


def test_duplicates_make_no_second_call(setup: Setup, fake_redis: fakeredis.FakeRedis) -> None:
    pipeline, provider, _ = setup()
    for task in ("t-1", "t-2", "t-3"):
        pipeline.handle([REQUEST], {}, task)
    assert provider.cancels == 1 and len(events(fake_redis)) == 1
    assert steps(fake_redis).count("duplicate") == 2


def test_a_live_lease_defers_a_parallel_delivery(setup: Setup,
                                                 fake_redis: fakeredis.FakeRedis) -> None:
    # Given another worker holds the request (phase calling, lease running)
    pipeline, provider, clock = setup()
    fake_redis.hset("idvcancel:req:r-1", mapping={
        "v": 1, "fp": pipeline_fp(), "phase": "calling", "lease_until": clock.now + 10,
        "attempts": 1, "owner": "other"})
    fake_redis.set("idvcancel:audit:head", "")
    # When a duplicate delivery arrives / Then it waits and calls nothing
    step = pipeline.handle([REQUEST], {}, "t-2")
    assert isinstance(step, RetryLater) and provider.cancels == 0


def pipeline_fp() -> str:
    return CancelRequest.model_validate(REQUEST).fingerprint()


def test_crash_mid_call_is_recovered_by_reading_not_calling(
        setup: Setup, fake_redis: fakeredis.FakeRedis) -> None:
    # Given a worker died mid-call after the provider cancelled the pass
    pipeline, provider, clock = setup(status="cancelled")
    fake_redis.hset("idvcancel:req:r-1", mapping={
        "v": 1, "fp": pipeline_fp(), "phase": "calling", "lease_until": clock.now - 1,
        "attempts": 1, "owner": "dead"})
    # When the redelivered message arrives
    step = pipeline.handle([REQUEST], {}, "t-1")
    # Then the status is read, no second cancel is sent, and the outcome is cancelled
    assert step == Finished("cancelled")
    assert provider.cancels == 0 and provider.reads == 1
    (event,) = events(fake_redis)
    assert event["recovered"] is True and event["attempts"] == 1
    assert ledger.read(fake_redis, "idvcancel:req:r-1").phase == "done"


def test_crash_before_the_call_landed_calls_once_more(setup: Setup,
                                                      fake_redis: fakeredis.FakeRedis) -> None:
    pipeline, provider, clock = setup(status="opened")
    fake_redis.hset("idvcancel:req:r-1", mapping={
        "v": 1, "fp": pipeline_fp(), "phase": "calling", "lease_until": clock.now - 1,
        "attempts": 1, "owner": "dead"})
    assert pipeline.handle([REQUEST], {}, "t-1") == Finished("cancelled")
    assert provider.reads == 1 and provider.cancels == 1
    assert "recovery" in steps(fake_redis)


def test_an_answer_lost_after_the_call_landed_is_read_not_called_again(
        setup: Setup, fake_redis: fakeredis.FakeRedis) -> None:
    # Given a provider that carries the cancel out, then the connection breaks
    pipeline, provider, clock = setup()

    def lands_then_breaks(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/cancel"):
            provider.cancels += 1
            provider.status = "cancelled"
            raise httpx.ReadError("connection reset by peer", request=request)
        return provider(request)

    adapter = IdPassAdapter(pipeline.settings, transport=httpx.MockTransport(lands_then_breaks))
    pipeline.adapters = lambda *_: adapter
    # When the request is handled, and handled again once its retry is due
    first = pipeline.handle([REQUEST], {}, "t-1")
    clock.now += 10
    second = pipeline.handle([REQUEST], {}, "t-1")
    # Then the retry read the status instead of cancelling twice, and ends cancelled
    assert isinstance(first, RetryLater) and second == Finished("cancelled")
    assert provider.cancels == 1 and provider.reads == 1
    (event,) = events(fake_redis)
    assert event["recovered"] is True


def test_conflicting_reuse_of_an_id_is_rejected_once(setup: Setup,
                                                     fake_redis: fakeredis.FakeRedis) -> None:
    pipeline, provider, _ = setup()
    pipeline.handle([REQUEST], {}, "t-1")
    other = {**REQUEST, "reason": "different"}
    assert pipeline.handle([other], {}, "t-2") == Finished("rejected")
    pipeline.handle([other], {}, "t-3")
    outcomes = [e["outcome"] for e in events(fake_redis)]
    assert outcomes == ["cancelled", "rejected"]
    assert events(fake_redis)[1]["error"]["code"] == "request_id_conflict"
    assert provider.cancels == 1


def test_every_step_keeps_the_chain_intact(setup: Setup,
                                           fake_redis: fakeredis.FakeRedis) -> None:
    pipeline, _, _ = setup()
    for i in range(5):
        pipeline.handle([{**REQUEST, "request_id": f"r-{i}"}], {}, f"t-{i}")
    pipeline.handle([{"junk": True}], {}, "t-junk")
    count, broken = verify_stream(fake_redis)
    assert broken is None and count == len(steps(fake_redis)) > 10
