"""``idvcancel.track``: services report a session as it is issued and as it progresses.

One positional argument, a JSON object (``worker.triggers.tracking.TrackedSession``). Thin on
purpose: validate, record, and (on a re-issue) enqueue the prior session's cancel.

A report that cannot be tracked is not dropped silently: it is logged at error level
(``track_rejected``, with the reason and the task id, never the report itself) and the
task returns ``{"ok": false, "error": {"code", "message"}}``. Reports are not audited:
the audit trail is about cancels, and a supersede's cancel is audited by the pipeline.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from config.settings import get_settings
from worker.app import app
from worker.errors import InvalidSession
from worker.logs import get_logger
from worker.triggers.tracking import shared_client, shared_sender, track, validate_session

TASK_NAME = "idvcancel.track"
#: Retries of a report that hit a failure other than Redis being away. Recording is
#: idempotent (a report seen twice is a progress update), so a retry is always safe.
MAX_RETRIES = 5


def _invalid(task_id: str, message: str) -> dict[str, Any]:
    get_logger(task_id=task_id).error("track_rejected", code="invalid_session", error=message)
    return {"ok": False, "error": {"code": "invalid_session", "message": message}}


@app.task(name=TASK_NAME, bind=True, max_retries=MAX_RETRIES)
def track_session(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    """Track one session report. Takes ``*args, **kwargs`` so that a message with the
    wrong arguments is answered with a clear error instead of a Celery TypeError."""
    task_id = str(self.request.id)
    if kwargs or len(args) != 1:
        return _invalid(task_id, "expected exactly one positional argument (the session"
                                 f" object), got {len(args)} and {len(kwargs)} keyword(s)")
    try:
        session = validate_session(args[0])
    except InvalidSession as exc:
        return _invalid(task_id, str(exc))
    settings = get_settings()
    try:
        result = track(shared_client(settings), session, settings=settings,
                       sender=shared_sender(settings))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Same as idvcancel.process: put the message back rather than lose the report.
        get_logger(task_id=task_id).warning("redis_unavailable", error=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        # If this was the broker refusing the supersede cancel, the report is recorded
        # and the prior session's claim stays: the sweep sends it after the reclaim delay
        # (the retry, seeing a known session, will not). Otherwise the retry records it.
        get_logger(task_id=task_id).exception("track_failed")
        raise self.retry(exc=exc, countdown=5) from exc
    return {
        "ok": True,
        "verdict": result.verdict,
        "superseded": result.superseded.reference if result.superseded else None,
        "request_ids": list(result.request_ids),
    }
