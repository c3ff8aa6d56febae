"""``idvcancel.track`` end to end: a report sent like any outside producer would, handled
by a real worker process, stored in the stack's real Redis."""

from __future__ import annotations

import time

from tests.integration.conftest import Stack, new_reference
from tests.integration.harness import send_process, wait_for
from worker import keys
from worker.triggers.tracking import SessionRecord, get_session

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

TRACK = "idvcancel.track"


def stored(stack: Stack, provider: str, reference: str, state: str) -> SessionRecord:
    """Wait until the session is stored in ``state``."""
    def found() -> SessionRecord | None:
        record = get_session(stack.redis, provider, reference)
        return record if record is not None and record.state == state else None
    return wait_for(found, timeout=15, message=f"{provider}:{reference} {state}")


def test_track_task_stores_the_session(stack: Stack) -> None:
    # Given a session issued an hour ago, reported as a producer would
    reference = new_reference("idpass")
    last = time.time() - 3600
    send_process(stack.broker_url, {
        "provider": "idpass", "reference": reference, "application_id": "app-1",
        "status": "opened", "last_activity": last,
        "options": {"channel": "web"}}, task_name=TRACK)
    # Then the worker stores it, actionable, scored by its last activity
    record = stored(stack, "idpass", reference, "active")
    assert record.application_id == "app-1" and record.status == "opened"
    assert record.options == {"channel": "web"}
    score = stack.redis.zscore(keys.track_active("idpass"), reference)
    assert score is not None and abs(score - last) < 0.01
    assert stack.redis.hget(keys.track_apps("idpass"), "app-1") == reference


def test_track_task_takes_iso_8601_and_progress_updates(stack: Stack) -> None:
    # Given a TXCloud verification reported pending with an ISO 8601 time
    reference = new_reference("txcloud")
    base = {"provider": "txcloud", "reference": reference, "application_id": "app-2"}
    send_process(stack.broker_url, {**base, "status": "pending",
                                   "last_activity": "2024-05-01T12:00:00Z"}, task_name=TRACK)
    first = stored(stack, "txcloud", reference, "active")
    assert first.last_activity == 1714564800.0
    # When it is reported verified
    send_process(stack.broker_url, {**base, "status": "verified"}, task_name=TRACK)
    # Then it leaves tracking (closed), its pointer gone
    stored(stack, "txcloud", reference, "closed")
    assert stack.redis.zscore(keys.track_active("txcloud"), reference) is None
    assert stack.redis.hget(keys.track_apps("txcloud"), "app-2") is None


def test_invalid_report_is_logged_not_stored_and_the_worker_goes_on(stack: Stack) -> None:
    # Given a report with an unknown status, then a valid one
    bad = new_reference("idpass")
    good = new_reference("idpass")
    task_id = send_process(stack.broker_url, {
        "provider": "idpass", "reference": bad, "application_id": "a",
        "status": "finished"}, task_name=TRACK)
    send_process(stack.broker_url, {
        "provider": "idpass", "reference": good, "application_id": "a",
        "status": "new"}, task_name=TRACK)
    # Then the valid one is stored, and the bad one is an error line naming the problem
    stored(stack, "idpass", good, "active")
    assert get_session(stack.redis, "idpass", bad) is None
    worker = stack.workers[0]

    def logged() -> str | None:
        lines = [line for line in worker.log_text().splitlines()
                 if "track_rejected" in line and task_id in line]
        return lines[0] if lines else None
    line = wait_for(logged, timeout=10, message="track_rejected log line")
    assert '"level": "error"' in line and "unknown status 'finished' for idpass" in line
    # And no cancel was asked for
    assert stack.events() == []
