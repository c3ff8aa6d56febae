"""Session tracking, the sweep's selection and supersede, on fakeredis (Lua included)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import structlog.testing

from config.settings import Settings
from worker import keys
from worker.contract import CancelRequest
from worker.errors import InvalidSession
from worker.triggers.sweep import humanize, plan_sweep, run_sweep, share, thresholds
from worker.triggers.tracking import (
    TrackedSession,
    get_session,
    record,
    request_id_for,
    track,
    validate_session,
)

DAY = 86400.0
T0 = 1_700_000_000.0  # a fixed "now" for every test
RETENTION = 3600


class FakeSender:
    """Collects what would be enqueued; can be told to fail like a broker that is away."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[CancelRequest] = []
        self.fail = fail

    def submit_many(self, requests: Iterable[CancelRequest | Mapping[str, Any]]) -> list[str]:
        batch = [r if isinstance(r, CancelRequest) else CancelRequest.model_validate(r)
                 for r in requests]
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.extend(batch)
        return [r.request_id for r in batch]


def ref(n: int) -> str:
    """A valid ID Pass reference (a UUID) numbered ``n``."""
    return f"00000000-0000-4000-8000-{n:012d}"


def session(n: int, *, app: str | None = None, status: str = "opened",
            idle_days: float = 0.0, provider: str = "idpass", **extra: Any) -> TrackedSession:
    reference = ref(n) if provider == "idpass" else f"ref-{n}"
    return TrackedSession.model_validate({
        "provider": provider, "reference": reference, "application_id": app or f"app-{n}",
        "status": status, "last_activity": T0 - idle_days * DAY, **extra})


def put(client: redis.Redis, s: TrackedSession, now: float = T0) -> str:
    return record(client, s, retention_seconds=RETENTION, now=now).verdict


@pytest.fixture
def settings() -> Settings:
    return Settings(sweep_after_seconds={}, sweep_batch_size=10_000,
                    sweep_reclaim_after_seconds=600, track_retention_seconds=RETENTION)


# -- storage ------------------------------------------------------------------------------


def test_actionable_session_is_stored_scored_by_last_activity(fake_redis: redis.Redis) -> None:
    # Given a session issued two days ago, still opened
    s = session(1, idle_days=2, options={"note": "x"})
    # When it is tracked
    verdict = put(fake_redis, s)
    # Then it is active, scored by its last activity, with its fields kept
    assert verdict == "active"
    assert fake_redis.zscore(keys.track_active("idpass"), ref(1)) == T0 - 2 * DAY
    stored = get_session(fake_redis, "idpass", ref(1))
    assert stored is not None and stored.state == "active"
    assert (stored.application_id, stored.status, stored.options) == ("app-1", "opened",
                                                                      {"note": "x"})


def test_terminal_status_drops_the_session_and_its_pointer(fake_redis: redis.Redis) -> None:
    # Given a tracked session
    put(fake_redis, session(1))
    # When it completes
    verdict = put(fake_redis, session(1, status="complete"))
    # Then it leaves tracking: out of the active set, no pointer, kept closed for a while
    assert verdict == "dropped"
    assert fake_redis.zcard(keys.track_active("idpass")) == 0
    assert fake_redis.hget(keys.track_apps("idpass"), "app-1") is None
    stored = get_session(fake_redis, "idpass", ref(1))
    assert stored is not None and stored.state == "closed" and stored.status == "complete"
    assert 0 < fake_redis.ttl(keys.track_session("idpass", ref(1))) <= RETENTION


def test_a_session_first_seen_terminal_is_never_tracked(fake_redis: redis.Redis) -> None:
    assert put(fake_redis, session(1, status="expired")) == "dropped"
    assert fake_redis.zcard(keys.track_active("idpass")) == 0


def test_a_late_report_cannot_revive_a_closed_session(fake_redis: redis.Redis) -> None:
    # Given a session reported complete
    put(fake_redis, session(1, status="complete"))
    # When an older "in_progress" report arrives after it
    verdict = put(fake_redis, session(1, status="in_progress"))
    # Then nothing changes
    assert verdict == "ignored"
    assert fake_redis.zcard(keys.track_active("idpass")) == 0


def test_last_activity_only_moves_forward(fake_redis: redis.Redis) -> None:
    # Given a session active one day ago
    put(fake_redis, session(1, idle_days=1))
    # When a report from three days ago arrives late
    put(fake_redis, session(1, status="in_progress", idle_days=3))
    # Then the status is updated but the session does not look idler than it is
    stored = get_session(fake_redis, "idpass", ref(1))
    assert stored is not None and stored.status == "in_progress"
    assert stored.last_activity == T0 - DAY


def test_activity_in_the_future_is_clamped_to_now(fake_redis: redis.Redis) -> None:
    # A fast producer clock must not put a session beyond the sweep's reach.
    put(fake_redis, session(1, idle_days=-30))
    assert fake_redis.zscore(keys.track_active("idpass"), ref(1)) == T0


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({"provider": "acme"}, "provider: Input should be"),
    ({"status": "finished"}, "unknown status 'finished' for idpass"),
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ({"reference": 42}, "reference: Input should be a valid string"),
    ({"last_activity": "last tuesday"}, "last_activity"),
    ({"last_activity": True}, "last_activity"),
    ({"application_id": ""}, "application_id"),
])
def test_invalid_reports_are_refused_with_a_clear_message(fields: dict[str, Any],
                                                          expected: str) -> None:
    # Given a report with one thing wrong
    raw = {"provider": "idpass", "reference": ref(1), "application_id": "a",
           "status": "opened", **fields}
    # Then validation names it
    with pytest.raises(InvalidSession, match=expected):
        validate_session(raw)


def test_non_object_report_is_refused() -> None:
    with pytest.raises(InvalidSession, match="must be a JSON object"):
        validate_session([1, 2])  # type: ignore[arg-type]


def test_last_activity_takes_iso_8601_and_epoch_seconds() -> None:
    base = {"provider": "jumio", "reference": "r", "application_id": "a", "status": "PENDING"}
    iso = validate_session({**base, "last_activity": "2023-11-14T22:13:20Z"})
    epoch = validate_session({**base, "last_activity": T0})
    naive = validate_session({**base, "last_activity": "2023-11-14T22:13:20"})
    assert iso.last_activity.timestamp() == epoch.last_activity.timestamp() == T0
    assert naive.last_activity.timestamp() == T0  # naive is UTC


def test_request_ids_are_deterministic_and_fit_the_contract() -> None:
    assert request_id_for("sweep", "gu1", "v-1") == "sweep:gu1:v-1"
    long_ref = "r" * 256
    assert request_id_for("sweep", "gu1", long_ref) == request_id_for("sweep", "gu1", long_ref)
    assert len(request_id_for("supersede", "onespan", long_ref)) <= 128


# -- the sweep's selection ----------------------------------------------------------------


def test_plan_returns_the_k_oldest_due_sessions_only(fake_redis: redis.Redis,
                                                     settings: Settings) -> None:
    # Given 40 sessions idle 0..39 days (ID Pass threshold: 7 days) and a batch of 5
    for n in range(40):
        put(fake_redis, session(n, idle_days=n))
    small = settings.model_copy(update={"sweep_batch_size": 5})
    # When a dry run is asked for
    plan = plan_sweep(fake_redis, small, now=T0)
    # Then it lists exactly the 5 oldest, oldest first, and claims nothing
    assert [item.request.reference for item in plan] == [ref(n) for n in range(39, 34, -1)]
    assert fake_redis.zcard(keys.track_active("idpass")) == 40
    assert fake_redis.zcard(keys.track_claimed("idpass")) == 0


def test_plan_lists_only_sessions_older_than_the_threshold(fake_redis: redis.Redis,
                                                           settings: Settings) -> None:
    # Given sessions idle 6, 7 and 8 days and the default 7-day threshold
    for n, idle in enumerate([6.0, 6.99, 7.01, 8.0]):
        put(fake_redis, session(n, idle_days=idle))
    # Then only those idle for longer than 7 days are due
    plan = plan_sweep(fake_redis, settings, now=T0)
    assert sorted(item.request.reference for item in plan) == [ref(2), ref(3)]


def test_sweep_request_carries_source_reason_and_deterministic_id(
        fake_redis: redis.Redis, settings: Settings) -> None:
    put(fake_redis, session(1, idle_days=8))
    (item,) = plan_sweep(fake_redis, settings, now=T0)
    request = item.request
    assert request.request_id == f"sweep:idpass:{ref(1)}"
    assert (request.source, request.requested_by, request.action) == (
        "sweep", "idvcancel-sweep", "cancel")
    since = datetime.fromtimestamp(T0 - 8 * DAY, UTC).strftime("%Y-%m-%dT%H:%MZ")
    assert request.reason == f"abandoned: no activity since {since} (threshold 7 days)"


def test_thresholds_come_from_rules_unless_configured(settings: Settings) -> None:
    configured = settings.model_copy(update={"sweep_after_seconds": {"gu1": 60.0}})
    found = thresholds(configured)
    assert found["gu1"] == 60.0
    assert found["idpass"] == 7 * DAY and found["txcloud"] == DAY


def test_jumio_sessions_are_deleted_with_their_options(fake_redis: redis.Redis,
                                                       settings: Settings) -> None:
    options = {"product": "document", "region": "eu"}
    put(fake_redis, session(1, provider="jumio", status="PENDING", idle_days=8,
                            options=options))
    (item,) = plan_sweep(fake_redis, settings, now=T0)
    assert item.request.action == "delete" and item.request.options == options


def test_finished_jumio_scans_are_not_swept(fake_redis: redis.Redis,
                                            settings: Settings) -> None:
    # Given finished scans, long idle: deleting them is a retention decision, not a sweep's
    put(fake_redis, session(1, provider="jumio", status="DONE", idle_days=30))
    put(fake_redis, session(2, provider="jumio", status="FAILED", idle_days=30))
    # Then the sweep plans nothing
    assert plan_sweep(fake_redis, settings, now=T0) == []


def test_run_claims_each_due_session_once(fake_redis: redis.Redis,
                                          settings: Settings) -> None:
    # Given 12 due sessions, 3 recent ones and a batch of 5
    for n in range(12):
        put(fake_redis, session(n, idle_days=10 + n))
    for n in range(100, 103):
        put(fake_redis, session(n, idle_days=1))
    small = settings.model_copy(update={"sweep_batch_size": 5})
    sender = FakeSender()
    # When the sweep runs four times
    reports = [run_sweep(fake_redis, small, T0, sender=sender) for _ in range(4)]
    # Then the 12 are enqueued once each, oldest first, five at most per run
    assert [len(r.enqueued) for r in reports] == [5, 5, 2, 0]
    assert [r.reference for r in sender.sent] == [ref(n) for n in range(11, -1, -1)]
    # And they are out of tracking (closed), while the recent ones stay
    assert fake_redis.zcard(keys.track_active("idpass")) == 3
    assert fake_redis.zcard(keys.track_claimed("idpass")) == 0
    swept = get_session(fake_redis, "idpass", ref(0))
    assert swept is not None and swept.state == "closed"


def test_batch_is_shared_fairly_between_providers() -> None:
    assert share({"idpass": 100, "gu1": 2, "txcloud": 100}, 10) == {
        "idpass": 4, "gu1": 2, "txcloud": 4}
    assert share({"idpass": 3}, 10) == {"idpass": 3}
    assert humanize(86400 * 2 + 5) == "2 days"


def test_claims_of_a_crashed_sweep_are_sent_again_after_the_reclaim_delay(
        fake_redis: redis.Redis, settings: Settings) -> None:
    # Given a sweep that claimed two sessions and died before enqueueing them
    put(fake_redis, session(1, idle_days=8))
    put(fake_redis, session(2, idle_days=9))
    with pytest.raises(ConnectionError):
        run_sweep(fake_redis, settings, T0, sender=FakeSender(fail=True))
    assert fake_redis.zcard(keys.track_claimed("idpass")) == 2
    # When another sweep runs before the reclaim delay, it leaves them alone
    sender = FakeSender()
    assert run_sweep(fake_redis, settings, T0 + 60, sender=sender).enqueued == []
    # Then one after the delay sends them, with the same request ids
    report = run_sweep(fake_redis, settings, T0 + 601, sender=sender)
    assert sorted(report.enqueued) == [f"sweep:idpass:{ref(1)}", f"sweep:idpass:{ref(2)}"]
    assert fake_redis.zcard(keys.track_claimed("idpass")) == 0


def test_a_claimed_session_ignores_progress_and_terminal_withdraws_it(
        fake_redis: redis.Redis, settings: Settings) -> None:
    # Given two sessions claimed by a sweep that died
    put(fake_redis, session(1, idle_days=8))
    put(fake_redis, session(2, idle_days=8))
    with pytest.raises(ConnectionError):
        run_sweep(fake_redis, settings, T0, sender=FakeSender(fail=True))
    # When one reports progress and the other completes
    assert put(fake_redis, session(1, status="in_progress")) == "ignored"
    assert put(fake_redis, session(2, status="complete")) == "dropped"
    # Then only the first is still to be cancelled
    sender = FakeSender()
    run_sweep(fake_redis, settings, T0 + 601, sender=sender)
    assert [r.reference for r in sender.sent] == [ref(1)]


# -- supersede ----------------------------------------------------------------------------


def test_new_session_for_the_application_supersedes_the_prior(
        fake_redis: redis.Redis, settings: Settings) -> None:
    # Given an in-flight session for application A
    put(fake_redis, session(1, app="A", options={"k": "v"}))
    sender = FakeSender()
    # When a new session is tracked for A
    result = track(fake_redis, session(2, app="A"), settings=settings, sender=sender, now=T0)
    # Then the prior is cancelled with source supersede, naming the new one
    (request,) = sender.sent
    assert request.request_id == f"supersede:idpass:{ref(1)}"
    assert (request.source, request.requested_by, request.reference) == (
        "supersede", "idvcancel-supersede", ref(1))
    assert request.reason == f"superseded by {ref(2)}"
    assert request.options == {"k": "v"}
    assert result.superseded is not None and result.request_ids == (request.request_id,)
    # And the prior is out of tracking while the new one is A's in-flight session
    prior = get_session(fake_redis, "idpass", ref(1))
    assert prior is not None and prior.state == "closed" and prior.superseded_by == ref(2)
    assert fake_redis.zrange(keys.track_active("idpass"), 0, -1) == [ref(2)]
    assert fake_redis.zcard(keys.track_claimed("idpass")) == 0
    assert fake_redis.hget(keys.track_apps("idpass"), "A") == ref(2)


@pytest.mark.parametrize("second", [
    pytest.param(session(1, app="A", status="in_progress"), id="progress-of-the-same"),
    pytest.param(session(2, app="B"), id="another-application"),
    pytest.param(session(2, app="A", provider="gu1", status="pending"), id="another-provider"),
    pytest.param(session(2, app="A", status="complete"), id="new-one-already-terminal"),
])
def test_no_supersede_without_a_new_in_flight_session(
        fake_redis: redis.Redis, settings: Settings, second: TrackedSession) -> None:
    put(fake_redis, session(1, app="A"))
    sender = FakeSender()
    track(fake_redis, second, settings=settings, sender=sender, now=T0)
    assert sender.sent == []
    assert fake_redis.zscore(keys.track_active("idpass"), ref(1)) is not None


def test_no_supersede_when_the_prior_already_finished(fake_redis: redis.Redis,
                                                      settings: Settings) -> None:
    put(fake_redis, session(1, app="A"))
    put(fake_redis, session(1, app="A", status="complete"))
    sender = FakeSender()
    track(fake_redis, session(2, app="A"), settings=settings, sender=sender, now=T0)
    assert sender.sent == []


def test_back_to_back_reissues_supersede_each_prior_once(fake_redis: redis.Redis,
                                                         settings: Settings) -> None:
    # Given A's session 1, then sessions 2 and 3 issued one right after the other
    put(fake_redis, session(1, app="A"))
    sender = FakeSender()
    for n in (2, 3, 3):  # the last report is a redelivery of 3
        track(fake_redis, session(n, app="A"), settings=settings, sender=sender, now=T0)
    # Then 1 is superseded by 2 and 2 by 3, once each, and only 3 is in flight
    assert [(r.reference, r.reason) for r in sender.sent] == [
        (ref(1), f"superseded by {ref(2)}"), (ref(2), f"superseded by {ref(3)}")]
    assert fake_redis.zrange(keys.track_active("idpass"), 0, -1) == [ref(3)]


def test_a_supersede_that_could_not_be_enqueued_is_sent_by_the_sweep(
        fake_redis: redis.Redis, settings: Settings) -> None:
    # Given a supersede whose enqueue failed (broker away)
    put(fake_redis, session(1, app="A"))
    with pytest.raises(ConnectionError):
        track(fake_redis, session(2, app="A"), settings=settings,
              sender=FakeSender(fail=True), now=T0)
    # When a sweep runs after the reclaim delay
    sender = FakeSender()
    run_sweep(fake_redis, settings, T0 + 601, sender=sender)
    # Then it sends the supersede cancel, as a supersede
    (request,) = sender.sent
    assert request.request_id == f"supersede:idpass:{ref(1)}"
    assert request.source == "supersede" and request.reason == f"superseded by {ref(2)}"


# -- the task's answer to bad input -------------------------------------------------------


def test_track_task_answers_invalid_input_with_an_error() -> None:
    from tasks.track import track_session

    # Given a report with an unknown status, sent to the task
    raw = {"provider": "idpass", "reference": ref(1), "application_id": "a", "status": "x"}
    # When the task runs it
    with structlog.testing.capture_logs() as logs:
        answer = track_session.apply(args=(raw,)).get()
    # Then it answers with the reason and logs an error line (not the report itself)
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_session"
    assert "unknown status 'x' for idpass" in answer["error"]["message"]
    (line,) = [entry for entry in logs if entry["event"] == "track_rejected"]
    assert line["log_level"] == "error" and ref(1) not in str(line)
    assert track_session.apply(args=(1, 2)).get()["ok"] is False
