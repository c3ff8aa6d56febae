"""The abandoned-application sweep: cancel tracked sessions idle for too long.

Run by Celery beat as ``idvcancel.sweep`` every ``IDVCANCEL_SWEEP_INTERVAL_SECONDS``.
A session is *due* when its last activity is older than its provider's threshold
(``IDVCANCEL_SWEEP_AFTER_SECONDS``, else the rules table's ``abandoned_after``) and its
status is still actionable (only such sessions are in the active set at all).

Once only: due sessions are *claimed* by ``lua/sweep.lua`` (ZRANGEBYSCORE … LIMIT and
ZREM in one script), so of overlapping sweeps or several beat instances only the one
that removed a session enqueues its cancel; and the request id is deterministic
(``sweep:<provider>:<reference>``), so the pipeline's idempotency ledger is a second
guard. A claim is released after its cancel is enqueued; one that a crashed sweep never
released is handed out again after ``IDVCANCEL_SWEEP_RECLAIM_AFTER_SECONDS``.

Bounded: a run claims at most ``IDVCANCEL_SWEEP_BATCH_SIZE`` sessions, shared fairly
between providers, in chunks of ``CLAIM_CHUNK`` (one short script each, one pipelined
enqueue each), so neither Redis nor the broker is held for long.

Examples:
    >>> from config.settings import Settings
    >>> thresholds(Settings(sweep_after_seconds={"idpass": 3600}))["idpass"]
    3600.0
    >>> plan_sweep(client, settings, now=time.time())               # doctest: +SKIP
    [SweepItem(provider='idpass', reference='fe42…', ...)]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from config.settings import Settings
from worker import keys, scripts
from worker.contract import CancelRequest
from worker.logs import get_logger
from worker.providers import supported_providers
from worker.triggers.tracking import (
    Sender,
    SessionRecord,
    cancel_of,
    provider_rules,
    release,
    shared_sender,
    supersede_request,
    text,
)

#: ``requested_by`` of the sweep's cancels.
SWEEP_REQUESTER = "idvcancel-sweep"
#: Most sessions one claim script takes (and one enqueue sends): keeps each script short.
CLAIM_CHUNK = 2000

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def humanize(seconds: float) -> str:
    """A duration in its largest whole unit, for reasons people read.

    Examples:
        >>> humanize(7 * 86400), humanize(90_000), humanize(7200), humanize(59.9)
        ('7 days', '1 day', '2 hours', '59 seconds')
    """
    for unit, size in _UNITS:
        if seconds >= size or size == 1:
            count = int(max(seconds, 0) // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable")  # pragma: no cover


def thresholds(settings: Settings) -> dict[str, float]:
    """provider → seconds without activity after which a session is abandoned.

    Providers whose module this build cannot load are left out (and never swept).
    """
    found: dict[str, float] = {}
    for provider in supported_providers():
        try:
            rules = provider_rules(provider)
        except ValueError:
            get_logger(provider=provider).warning("sweep_provider_unavailable")
            continue
        default = rules.abandoned_after.total_seconds()
        found[provider] = float(settings.sweep_after_seconds.get(provider, default))
    return found


def share(counts: Mapping[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` between providers fairly: none gets more than it needs, and a
    backlog at one provider cannot starve the others.

    Examples:
        >>> share({"idpass": 100, "gu1": 2, "txcloud": 100}, 10)
        {'idpass': 4, 'gu1': 2, 'txcloud': 4}
    """
    given: dict[str, int] = {}
    left = budget
    ordered = sorted(counts, key=lambda p: counts[p])
    for index, provider in enumerate(ordered):
        fair = left // (len(ordered) - index)
        given[provider] = min(counts[provider], fair)
        left -= given[provider]
    return {p: given[p] for p in counts}


def sweep_request(session: SessionRecord, threshold: float) -> CancelRequest:
    """The sweep's cancel of one abandoned session; the reason says why, with no data.

    The reason is built from stored data only, never from the clock: a claim that is
    sent again later (its sweep died before releasing it) must be the same request, or
    the idempotency ledger would answer it as a conflicting reuse of the id.

    Examples:
        >>> s = SessionRecord(provider="idpass", reference="r-1", last_activity=0.0)
        >>> sweep_request(s, threshold=7 * 86400).reason
        'abandoned: no activity since 1970-01-01T00:00Z (threshold 7 days)'
    """
    since = datetime.fromtimestamp(session.last_activity, UTC).strftime("%Y-%m-%dT%H:%MZ")
    return cancel_of(session, source="sweep", requested_by=SWEEP_REQUESTER,
                     reason=f"abandoned: no activity since {since}"
                            f" (threshold {humanize(threshold)})")


@dataclass(frozen=True)
class SweepItem:
    """One cancel a sweep enqueues (or, in a dry run, would enqueue).

    Parameters:
        request: the cancel request itself.
        session: the tracked session it is for.
        idle_seconds: time since its last activity.
        threshold_seconds: its provider's threshold.
        reclaimed: a claim a crashed sweep (or track) left behind, sent again.
    """

    request: CancelRequest
    session: SessionRecord
    idle_seconds: float
    threshold_seconds: float
    reclaimed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, for ``idvcancel sweep --dry-run``."""
        return {
            "request_id": self.request.request_id, "provider": self.request.provider,
            "action": self.request.action, "reference": self.request.reference,
            "source": self.request.source, "reason": self.request.reason,
            "status": self.session.status, "idle_seconds": round(self.idle_seconds, 3),
            "threshold_seconds": self.threshold_seconds, "reclaimed": self.reclaimed,
        }


@dataclass
class SweepReport:
    """What one sweep run did.

    Parameters:
        enqueued: request ids enqueued, in order.
        by_provider: provider → cancels enqueued.
        skipped: ``provider:reference`` of claims that could not become a request
            (released, logged).
    """

    now: float
    enqueued: list[str] = field(default_factory=list)
    by_provider: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"ok": True, "enqueued": len(self.enqueued), "by_provider": self.by_provider,
                "skipped": len(self.skipped)}


def _epoch(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    return now.timestamp() if isinstance(now, datetime) else float(now)


@dataclass(frozen=True)
class _Window:
    """One provider's bounds for one run."""

    provider: str
    threshold: float
    due_before: str  # exclusive bound on last activity
    reclaim_before: float  # claims made at or before this are stale

    @classmethod
    def of(cls, provider: str, threshold: float, now: float, settings: Settings) -> _Window:
        return cls(provider, threshold, f"({now - threshold:.3f}",
                   now - settings.sweep_reclaim_after_seconds)


def _windows(client: redis.Redis, settings: Settings, now: float
             ) -> list[tuple[_Window, int]]:
    """Each provider's window and its share of the batch (two ZCOUNTs each: O(log n))."""
    windows = [_Window.of(p, t, now, settings) for p, t in thresholds(settings).items()]
    pipe = client.pipeline(transaction=False)
    for w in windows:
        pipe.zcount(keys.track_claimed(w.provider), "-inf", w.reclaim_before)
        pipe.zcount(keys.track_active(w.provider), "-inf", w.due_before)
    counts = pipe.execute()
    wanted = {w.provider: int(counts[2 * i]) + int(counts[2 * i + 1])
              for i, w in enumerate(windows)}
    shares = share(wanted, settings.sweep_batch_size)
    return [(w, shares[w.provider]) for w in windows if shares[w.provider] > 0]


def _item(window: _Window, session: SessionRecord, now: float, reclaimed: bool) -> SweepItem:
    if not session.status:
        raise ValueError("the session's record is gone")
    # A reclaimed supersede claim is still a supersede: same request id, same reason.
    if session.claim == "supersede":
        request = supersede_request(session)
    else:
        request = sweep_request(session, window.threshold)
    return SweepItem(request, session, now - session.last_activity, window.threshold,
                     reclaimed)


def plan_sweep(client: redis.Redis, settings: Settings,
               now: datetime | float | None = None) -> list[SweepItem]:
    """What a sweep at ``now`` would enqueue, claiming nothing (a dry run).

    Same selection as ``run_sweep``: per provider, claims left behind by a crashed run
    first, then due sessions, oldest activity first, within the batch size.

    Parameters:
        client: Redis (the broker's).
        settings: thresholds, batch size, reclaim delay.
        now: a datetime or epoch seconds (default: the clock).
    """
    at = _epoch(now)
    items: list[SweepItem] = []
    for window, budget in _windows(client, settings, at):
        stale = client.zrangebyscore(keys.track_claimed(window.provider), "-inf",
                                     window.reclaim_before, start=0, num=budget)
        due = client.zrangebyscore(keys.track_active(window.provider), "-inf",
                                   window.due_before, start=0, num=budget - len(stale))
        refs = [(text(r), True) for r in stale] + [(text(r), False) for r in due]
        pipe = client.pipeline(transaction=False)
        for ref, _ in refs:
            pipe.hgetall(keys.track_session(window.provider, ref))
        for (ref, reclaimed), raw in zip(refs, pipe.execute(), strict=True):
            fields = {text(k): text(v) for k, v in raw.items()}
            session = SessionRecord.from_fields(window.provider, ref, fields)
            try:
                items.append(_item(window, session, at, reclaimed))
            except (ValidationError, ValueError):
                continue  # run_sweep would skip (and release) it as well
    return items


def _claim(client: redis.Redis, window: _Window, now: float, limit: int
           ) -> list[tuple[SessionRecord, bool]]:
    """Claim up to ``limit`` sessions (``lua/sweep.lua``); each with "was it stale"."""
    script = scripts.script(client, "sweep")
    reply = script(
        keys=[keys.track_active(window.provider), keys.track_claimed(window.provider),
              keys.track_apps(window.provider)],
        args=[f"{now:.3f}", window.due_before, str(limit), f"{window.reclaim_before:.3f}",
              keys.track_session_prefix(window.provider)],
    )
    entries = json.loads(text(reply))
    return [(SessionRecord.from_fields(window.provider, entry["ref"], entry["fields"]),
             entry["kind"] == "stale") for entry in entries or []]


def _sweep_provider(client: redis.Redis, settings: Settings, sender: Sender,
                    window: _Window, budget: int, report: SweepReport) -> None:
    log = get_logger(provider=window.provider)
    taken = 0
    while taken < budget:
        chunk = min(CLAIM_CHUNK, budget - taken)
        claims = _claim(client, window, report.now, chunk)
        requests: list[CancelRequest] = []
        for session, reclaimed in claims:
            try:
                requests.append(_item(window, session, report.now, reclaimed).request)
            except (ValidationError, ValueError) as exc:
                # Cannot become a request (e.g. its hash expired): releasing it beats
                # handing it out again forever.
                report.skipped.append(f"{window.provider}:{session.reference}")
                log.warning("sweep_skipped", reference=session.reference,
                            error=type(exc).__name__)
        if requests:
            report.enqueued.extend(sender.submit_many(requests))
            report.by_provider[window.provider] = (
                report.by_provider.get(window.provider, 0) + len(requests))
        # Only now, with the cancels on the queue: a crash before this leaves the claims
        # to be handed out again, never lost.
        release(client, window.provider, [s.reference for s, _ in claims],
                retention_seconds=settings.track_retention_seconds, now=report.now)
        taken += len(claims)
        if len(claims) < chunk:
            break


def run_sweep(client: redis.Redis, settings: Settings, now: datetime | float | None = None,
              *, sender: Sender | None = None) -> SweepReport:
    """Claim the due sessions and enqueue one cancel each (``source: "sweep"``).

    Parameters:
        client: Redis (the broker's).
        settings: thresholds, batch size, reclaim delay, retention.
        now: a datetime or epoch seconds (default: the clock). Tests pass a future time
            to make sessions due; the Celery task never takes one from a message.
        sender: what enqueues (default: a shared ``Producer`` for ``settings.redis_url``).

    Examples:
        >>> report = run_sweep(client, settings)                      # doctest: +SKIP
        >>> report.summary()                                          # doctest: +SKIP
        {'ok': True, 'enqueued': 3, 'by_provider': {'idpass': 3}, 'skipped': 0}
    """
    report = SweepReport(now=_epoch(now))
    out = sender or shared_sender(settings)
    for window, budget in _windows(client, settings, report.now):
        _sweep_provider(client, settings, out, window, budget, report)
    get_logger().info("sweep_done", enqueued=len(report.enqueued),
                      by_provider=report.by_provider, skipped=len(report.skipped))
    return report
