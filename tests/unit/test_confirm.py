"""Confirmation on fakeredis and mock transports: a cancel or deletion that ended well is
read back once due, ``confirmed`` or ``confirmation_failed`` goes on the record, a failure
goes to the "needs attention" store, and the result event is never touched.

The same against the simulator, for every provider, with real workers and beat:
tests/integration/test_confirm_e2e.py.
"""

from __future__ import annotations

import json
from typing import Any, cast

import fakeredis
import httpx
import pytest

from config.celery import celery_config
from config.settings import Settings
from worker import keys
from worker.contract import CancelRequest, Outcome
from worker.delivery import confirm
from worker.delivery.confirm import Confirmer
from worker.delivery.pipeline import Finished, Pipeline
from worker.journal import attention
from worker.journal.steps import Journal
from worker.journal.verify import verify_stream
from worker.providers.base import ProviderAdapter
from worker.providers.idpass import IdPassAdapter
from worker.providers.jumio import JumioAdapter


def _entries(client: fakeredis.FakeRedis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of ``stream`` (typed: fakeredis answers text here)."""
    return cast("list[tuple[str, dict[str, str]]]", client.xrange(stream))


REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"
SETTINGS = Settings(idpass_base_url="http://idpass.test", idpass_token="tok",
                    jumio_api_token="t", jumio_api_secret="s", jumio_user_agent="Tests/1.0",
                    retry_max_attempts=3, retry_base_seconds=1, retry_cap_seconds=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class IdPass:
    """ID Pass: a cancel answers 200; the session shows ``cancelled`` after it unless
    ``keeps_active``; ``read_failures`` answers to the details read come first."""

    def __init__(self, *read_failures: int, keeps_active: bool = False) -> None:
        self.status = "opened"
        self.keeps_active = keeps_active
        self.read_failures = list(read_failures)
        self.reads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/details"):
            self.reads += 1
            if self.read_failures:
                return httpx.Response(self.read_failures.pop(0), json={"error": "x"})
            return httpx.Response(200, json={"status": self.status, "first_name": "Ana"})
        if not self.keeps_active:
            self.status = "cancelled"
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": True})


def make(client: fakeredis.FakeRedis, adapter: ProviderAdapter
         ) -> tuple[Pipeline, Confirmer, Clock]:
    clock = Clock()
    journal = Journal(client)
    pipeline = Pipeline(SETTINGS, journal, adapters=lambda *_: adapter, clock=clock)
    return pipeline, Confirmer(SETTINGS, journal, adapters=lambda *_: adapter,
                               clock=clock), clock


def run(pipeline: Pipeline, request_id: str = "r-1", **fields: Any) -> str:
    request = {"request_id": request_id, "provider": "idpass", "action": "cancel",
               "reference": REF, "requested_by": "tests", **fields}
    step = pipeline.handle([request], {}, task_id=f"task-{request_id}")
    assert isinstance(step, Finished)
    return step.outcome


def audit(client: fakeredis.FakeRedis, request_id: str = "r-1") -> list[dict[str, Any]]:
    records = [json.loads(f["record"]) for _, f in _entries(client, keys.AUDIT)]
    return [r for r in records if r["request_id"] == request_id]


def events(client: fakeredis.FakeRedis) -> list[dict[str, Any]]:
    return [json.loads(f["event"]) for _, f in _entries(client, keys.RESULTS)]


def test_a_cancel_that_took_hold_is_confirmed_once_due(fake_redis: fakeredis.FakeRedis
                                                       ) -> None:
    # Given an ID Pass cancel that ended cancelled
    provider = IdPass()
    pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(provider)))
    assert run(pipeline) == "cancelled"
    # Then its confirmation is due 60 s later, and nothing is read before
    assert fake_redis.zscore(keys.CONFIRM_DUE, "r-1") == clock.now + 60
    clock.now += 59
    assert confirmer.drain().claimed == 0 and provider.reads == 0
    # When it is due and the drain runs
    clock.now += 2
    report = confirmer.drain()
    # Then the details read shows cancelled: confirmed, on the record after completed
    assert (report.claimed, report.confirmed) == (1, 1)
    records = audit(fake_redis)
    assert [r["step"] for r in records] == ["received", "attempt", "completed", "confirmed"]
    assert records[-1]["provider_status"] == "cancelled" and records[-1]["outcome"] == "cancelled"
    assert records[-1]["after_s"] == 61 and records[-1]["checks"] == 1
    # and nothing of the provider's body reached it
    assert "Ana" not in json.dumps(records[-1])
    # and it is done: nothing due, nothing for a person, the chain intact
    assert fake_redis.zcard(keys.CONFIRM_DUE) == 0 and attention.depth(fake_redis) == 0
    assert verify_stream(fake_redis)[1] is None


def test_a_session_that_stays_active_fails_confirmation_and_needs_attention(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a provider that answered 200 to the cancel but keeps the session active
    pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(IdPass(keeps_active=True))))
    assert run(pipeline) == "cancelled"
    # When the confirmation is due
    clock.now += 61
    report = confirmer.drain()
    # Then it failed, says what was read, and the request needs attention
    assert report.failed == 1
    record = audit(fake_redis)[-1]
    assert record["step"] == "confirmation_failed"
    assert (record["provider_status"], record["http_status"], record["error"]) == (
        "opened", 200, "still_active")
    [entry] = list(attention.list_entries(fake_redis))
    assert entry["request_id"] == "r-1" and entry["provider_status"] == "opened"
    # And the result event is what the provider answered, once, untouched
    assert [e["outcome"] for e in events(fake_redis)] == ["cancelled"]
    assert verify_stream(fake_redis)[1] is None


def test_a_read_that_fails_for_a_while_is_retried_then_recorded(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a details read that answers 503 once
    provider = IdPass(503)
    pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(provider)))
    run(pipeline)
    clock.now += 61
    # When it is due: the first read fails and the confirmation waits (backoff)
    assert confirmer.drain().deferred == 1
    assert [r["step"] for r in audit(fake_redis)][-1] == "completed"
    # Then the next read, once due again, confirms it on its second check
    clock.now += 10
    assert confirmer.drain().confirmed == 1
    assert audit(fake_redis)[-1]["checks"] == 2


def test_reads_failing_past_the_retry_budget_fail_the_confirmation(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a details read that answers 503 three times (the budget)
    pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(IdPass(503, 503, 503))))
    run(pipeline)
    for _ in range(3):
        clock.now += 61
        confirmer.drain()
    # Then it is a failed confirmation with the provider's error code
    record = audit(fake_redis)[-1]
    assert record["step"] == "confirmation_failed" and record["http_status"] == 503
    assert record["checks"] == 3 and attention.depth(fake_redis) == 1


@pytest.mark.parametrize(("answer", "step", "error"), [
    (httpx.Response(404, json={"title": "Not Found", "status": 404}), "confirmed", None),
    (httpx.Response(200, json={"status": "DONE"}), "confirmation_failed", "still_present"),
])
def test_a_jumio_deletion_is_confirmed_by_a_404(fake_redis: fakeredis.FakeRedis,
                                                answer: httpx.Response, step: str,
                                                error: str | None) -> None:
    # Given a Jumio delete that ended deleted, and what its GET answers afterwards
    def jumio(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200) if request.method == "DELETE" else answer

    adapter = JumioAdapter(SETTINGS, transport=httpx.MockTransport(jumio))
    pipeline, confirmer, clock = make(fake_redis, adapter)
    assert run(pipeline, provider="jumio", action="delete", reference="scan-1",
               options={"product": "scan", "region": "eu"}) == "deleted"
    # When its confirmation is due
    clock.now += 61
    confirmer.drain()
    # Then a 404 (gone) confirms it, and a transaction still readable does not
    record = audit(fake_redis)[-1]
    assert (record["step"], record["error"]) == (step, error)


def test_a_onespan_erasure_is_read_after_its_grace_period(fake_redis: fakeredis.FakeRedis
                                                          ) -> None:
    # Given a OneSpan erasure with a grace period of 3 days, and a cancel
    erase = CancelRequest(request_id="e-1", provider="onespan", action="delete",
                          reference="t-1", requested_by="x", options={"grace_period": 3})
    cancel = CancelRequest(request_id="c-1", provider="onespan", action="cancel",
                           reference="t-2", requested_by="x")
    # When their confirmations are scheduled as they end
    for request in (erase, cancel):
        confirm.schedule(fake_redis, request, "deleted", SETTINGS, now=1000.0)
    # Then the erasure is read once the grace period has passed, the cancel after 60 s
    assert fake_redis.zscore(keys.CONFIRM_DUE, "e-1") == 1000.0 + 3 * 86400 + 60
    assert fake_redis.zscore(keys.CONFIRM_DUE, "c-1") == 1060.0


def test_only_requests_that_ended_cancelled_or_deleted_are_confirmed(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a scheduled confirmation whose request is in flight again (a replay), one
    # whose ledger says it ended otherwise, and one that cannot be read
    _pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(IdPass())))
    request = CancelRequest(request_id="r-2", provider="idpass", action="cancel",
                            reference=REF, requested_by="x")
    for rid, phase, outcome in (("r-2", "waiting", ""), ("r-3", "done", "not_cancellable")):
        fake_redis.hset(keys.request_ledger(rid), mapping={"v": "3", "phase": phase,
                                                           "outcome": outcome})
        confirm.schedule(fake_redis, request.model_copy(update={"request_id": rid}),
                         "cancelled", SETTINGS, clock.now - 100)
    fake_redis.hset(keys.CONFIRM_REQUESTS, "r-4", "not json")
    fake_redis.zadd(keys.CONFIRM_DUE, {"r-4": 0})
    # When the drain runs
    report = confirmer.drain()
    # Then the one in flight waits, the others are forgotten, and nothing is recorded
    assert (report.deferred, report.dropped, report.confirmed, report.failed) == (1, 2, 0, 0)
    assert fake_redis.zrange(keys.CONFIRM_DUE, 0, -1) == ["r-2"]
    assert fake_redis.xlen(keys.AUDIT) == 0


def test_a_claimed_confirmation_is_not_claimed_twice(fake_redis: fakeredis.FakeRedis) -> None:
    # Given a due confirmation claimed by a drain that died before recording it
    request = CancelRequest(request_id="r-5", provider="idpass", action="cancel",
                            reference=REF, requested_by="x")
    confirm.schedule(fake_redis, request, "cancelled", SETTINGS, now=0)
    claim = fake_redis.register_script(confirm._CLAIM)
    assert claim(keys=[keys.CONFIRM_DUE, keys.CONFIRM_REQUESTS], args=["100", "400", 10])[0] == (
        "r-5")
    # Then another drain within the lease finds nothing, and one after it claims it again
    assert claim(keys=[keys.CONFIRM_DUE, keys.CONFIRM_REQUESTS], args=["200", "500", 10]) == []
    assert claim(keys=[keys.CONFIRM_DUE, keys.CONFIRM_REQUESTS], args=["401", "701", 10])[0] == (
        "r-5")


def test_confirmation_settings_and_beat() -> None:
    # Given the defaults: read back 60 s after, beat every 10 s
    settings = Settings()
    assert (settings.confirm_after_seconds, settings.confirm_interval_seconds) == (60, 10)
    # Then beat enqueues the drain at the interval set
    entry = celery_config(Settings(confirm_interval_seconds=5))["beat_schedule"][
        "idvcancel-confirm"]
    assert entry["task"] == "idvcancel.confirm" and entry["schedule"] == 5


def test_the_needs_attention_gauge_reads_the_store(fake_redis: fakeredis.FakeRedis) -> None:
    # Given two requests that need attention
    for rid in ("r-1", "r-2"):
        attention.add(fake_redis, {"request_id": rid, "provider": "idpass"}, at=1.0)
    # When the gauge is scraped
    [family] = list(attention.AttentionDepth(lambda: attention.depth(fake_redis)).collect())
    # Then it reports how many wait for a person
    assert family.name == "idvcancel_needs_attention" and family.samples[0].value == 2


def test_a_backlog_larger_than_a_batch_is_drained_in_one_run(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given 250 cancels confirmed due at once (more than one batch of 200)
    pipeline, confirmer, clock = make(fake_redis, IdPassAdapter(
        SETTINGS, transport=httpx.MockTransport(IdPass())))
    for n in range(250):
        run(pipeline, request_id=f"r-{n}")
    clock.now += 61
    # When one run drains them (reads in parallel)
    report = confirmer.run()
    # Then every one is confirmed, once, and the chain holds
    assert (report.claimed, report.confirmed) == (250, 250)
    steps = [json.loads(f["record"])["step"] for _, f in _entries(fake_redis, keys.AUDIT)]
    assert steps.count("confirmed") == 250 and fake_redis.zcard(keys.CONFIRM_DUE) == 0
    assert verify_stream(fake_redis)[1] is None


def test_a_confirmation_is_written_only_with_the_step_that_ends_the_request(
        fake_redis: fakeredis.FakeRedis) -> None:
    """Given a request whose ledger another delivery moved (version 1)
    When a stale delivery tries to end it, its confirmation in the same step
    Then nothing is written: no confirmation due, no result; and when the step applies,
    the confirmation is there with the result, its due time kept on a second finish."""
    from worker.journal.ledger import LedgerState
    from worker.journal.steps import Moved

    journal = Journal(fake_redis)
    key = keys.request_ledger("r-9")
    request = CancelRequest(request_id="r-9", provider="idpass", action="cancel",
                            reference=REF, requested_by="tests")
    assert journal.apply(key, 0, ledger=LedgerState.claimed("f", "o", 9.0, 0,
                                                           recover=False)) is None
    done = LedgerState.done("f", Outcome.CANCELLED, 1, 200, "cancelled")
    made = confirm.confirmation(request, "cancelled", SETTINGS, now=1000.0)
    assert journal.apply(key, 0, ledger=done, event={"request_id": "r-9"},
                         confirmation=made) == Moved(1)
    assert fake_redis.zcard(keys.CONFIRM_DUE) == 0 and fake_redis.xlen(keys.RESULTS) == 0
    assert journal.apply(key, 1, ledger=done, event={"request_id": "r-9"},
                         confirmation=made) is None
    assert fake_redis.zscore(keys.CONFIRM_DUE, "r-9") == 1060.0
    assert json.loads(str(fake_redis.hget(keys.CONFIRM_REQUESTS, "r-9")))["outcome"] == (
        "cancelled")
    later = confirm.confirmation(request, "cancelled", SETTINGS, now=5000.0)
    assert journal.apply(key, 2, ledger=done, confirmation=later) is None
    assert fake_redis.zscore(keys.CONFIRM_DUE, "r-9") == 1060.0
