"""``idvcancel.confirm``: reads back, at the provider, the cancels and deletions whose
confirmation is due, enqueued by Celery beat every ``IDVCANCEL_CONFIRM_INTERVAL_SECONDS``
(``config.celery``). Thin: ``worker.delivery.confirm`` does it, with this process's journal (the
chain head warm, the group commit shared) and provider guard (breaker, rate limit).

It takes no arguments, like the sweep: a message cannot choose what is confirmed or
when. Several runs at once are safe: confirmations are claimed under a lease.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task

from worker.app import app
from worker.delivery.confirm import Confirmer
from worker.delivery.runtime import pipeline
from worker.logs import get_logger

TASK_NAME = "idvcancel.confirm"


@app.task(name=TASK_NAME, bind=True, max_retries=0)
def confirm(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """One drain; returns its summary (``claimed``, ``confirmed``, ``failed``, ...)."""
    log = get_logger(task_id=str(self.request.id))
    shared = pipeline()
    confirmer = Confirmer(shared.settings, shared.journal, adapters=shared.adapters,
                          guard=shared.guard)
    try:
        report = confirmer.run()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Not retried: the next beat tick is a retry, and claims come back after the lease.
        log.warning("confirm_failed", error=type(exc).__name__)
        return {"ok": False, "error": {"code": "redis_unavailable", "message": str(exc)}}
    summary = {"ok": True, **report.summary()}
    if report.claimed:
        log.info("confirm_drained", **report.summary())
    return summary
