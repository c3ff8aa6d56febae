"""The abandoned-application sweep end to end: tracked sessions in the stack's Redis, the
sweep enqueueing cancels, a real worker carrying them out at the simulator."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from config.settings import Settings
from tests.integration.conftest import Stack, new_reference, seed
from tests.integration.harness import send_process
from worker.broker.producer import Producer
from worker.triggers.sweep import SweepReport, plan_sweep, run_sweep
from worker.triggers.tracking import TrackedSession, record

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

DAY = 86400.0


def settings_for(stack: Stack) -> Settings:
    return Settings(redis_url=stack.redis_url, broker_url=stack.broker_url)


def tracked(stack: Stack, provider: str, status: str, idle_days: float,
            sim_status: str | None = None, **extra: Any) -> str:
    """Seed a session at the simulator and track it, idle for ``idle_days``; its ref."""
    reference = new_reference(provider)
    seed(stack, provider, reference, sim_status or status)
    session = TrackedSession.model_validate({
        "provider": provider, "reference": reference, "application_id": f"app-{reference}",
        "status": status, "last_activity": time.time() - idle_days * DAY, **extra})
    record(stack.redis, session, retention_seconds=3600)
    return reference


def test_sweep_cancels_exactly_the_due_and_cancellable_sessions(stack: Stack) -> None:
    # Given, three days from now: ID Pass sessions idle 8 days and 3 days, one reported
    # complete, a TXCloud verification idle 3 days (threshold 1 day) and a Jumio
    # document idle 8 days (delete, with its product and region)
    due = [tracked(stack, "idpass", "opened", 5) for _ in range(3)]
    recent = [tracked(stack, "idpass", "opened", 0) for _ in range(2)]
    finished = tracked(stack, "idpass", "opened", 5)
    record(stack.redis, TrackedSession(provider="idpass", reference=finished,
                                       application_id="x", status="complete"),
           retention_seconds=3600)
    seed(stack, "idpass", finished, "complete")
    pending = tracked(stack, "txcloud", "pending", 0)
    document = new_reference("jumio")
    seed(stack, "jumio", document, "PENDING", product="document", region="eu")
    record(stack.redis, TrackedSession.model_validate({
        "provider": "jumio", "reference": document, "application_id": "j",
        "status": "PENDING", "last_activity": time.time() - 5 * DAY,
        "options": {"product": "document", "region": "eu"}}), retention_seconds=3600)
    later = time.time() + 3 * DAY
    # When a dry run and then a sweep run at that time
    plan = plan_sweep(stack.redis, settings_for(stack), now=later)
    report = run_sweep(stack.redis, settings_for(stack), now=later, sender=stack.producer)
    # Then the dry run foretold exactly what the sweep enqueued
    swept = [*due, pending, document]
    assert sorted(i.request.request_id for i in plan) == sorted(report.enqueued)
    assert len(report.enqueued) == len(swept)
    # And each due one ended with one call and one result event, source sweep
    ids = {ref: next(i for i in report.enqueued if i.endswith(ref)) for ref in swept}
    events = stack.results(list(ids.values()))
    for ref, request_id in ids.items():
        event = events[request_id]
        assert event["source"] == "sweep" and event["requested_by"] == "idvcancel-sweep"
        assert event["outcome"] == ("deleted" if ref == document else "cancelled"), event
        assert len(stack.provider_calls(event["provider"], ref)) == 1
    assert ids[due[0]] == f"sweep:idpass:{due[0]}"
    # And the reason is audited, saying why and nothing personal
    (reason,) = {r["reason"] for r in stack.audit(ids[due[0]])}
    assert re.fullmatch(r"abandoned: no activity since \d{4}-\d\d-\d\dT\d\d:\d\dZ"
                        r" \(threshold 7 days\)", reason), reason
    (reason,) = {r["reason"] for r in stack.audit(ids[pending])}
    assert reason.endswith("(threshold 1 day)")
    # And the recent and the finished ones were not touched
    for ref in [*recent, finished]:
        assert stack.provider_calls("idpass", ref) == []
    assert stack.sim_client.status("idpass", recent[0]) == "opened"
    stack.assert_chain_intact()


def test_sweep_task_run_by_the_worker(stack: Stack) -> None:
    # Given sessions idle 8 days, one idle 1 day
    due = [tracked(stack, "idpass", "in_progress", 8) for _ in range(4)]
    recent = tracked(stack, "idpass", "new", 1)
    # When idvcancel.sweep is sent twice at once, as two beat instances would
    for _ in range(2):
        send_process(stack.broker_url, None, task_name="idvcancel.sweep", args=[])
    # Then each due session is cancelled once, with a sweep result event
    events = stack.results([f"sweep:idpass:{ref}" for ref in due], settle=1.0)
    assert {e["outcome"] for e in events.values()} == {"cancelled"}
    assert {e["source"] for e in events.values()} == {"sweep"}
    for ref in due:
        assert len(stack.provider_calls("idpass", ref)) == 1
    assert stack.provider_calls("idpass", recent) == []


def test_racing_sweeps_enqueue_each_due_session_once(stack: Stack,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 60 due sessions, claimed 3 at a time so that the two sweeps interleave
    monkeypatch.setattr("worker.triggers.sweep.CLAIM_CHUNK", 3)
    due = [tracked(stack, "idpass", "opened", 8) for _ in range(60)]
    settings = settings_for(stack)
    barrier = threading.Barrier(2)
    reports: list[SweepReport] = []
    lock = threading.Lock()

    def sweep() -> None:
        producer = Producer(stack.redis_url, broker_url=stack.broker_url)
        try:
            barrier.wait()
            report = run_sweep(stack.redis, settings, sender=producer)
        finally:
            producer.close()
        with lock:
            reports.append(report)

    # When two sweeps run at the same moment
    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then between them each session was enqueued exactly once
    first, second = reports
    assert not set(first.enqueued) & set(second.enqueued)
    assert sorted(first.enqueued + second.enqueued) == sorted(
        f"sweep:idpass:{ref}" for ref in due)
    # And carried out once: one provider call and one result event each
    events = stack.results([f"sweep:idpass:{ref}" for ref in due], settle=1.0)
    assert {e["outcome"] for e in events.values()} == {"cancelled"}
    for ref in due:
        assert len(stack.provider_calls("idpass", ref)) == 1
    assert not any(r["step"] == "duplicate" for r in stack.audit())
