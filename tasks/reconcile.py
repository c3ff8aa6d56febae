"""``idvcancel.reconcile``: pushes again the requests whose message the broker lost,
enqueued by Celery beat every ``IDVCANCEL_RECONCILE_INTERVAL_SECONDS``
(``config.celery``). Thin: ``worker.triggers.reconcile`` does it.

It takes no arguments on purpose, like the sweep: a message cannot move its clock (a
``now`` in the future would push again every request in flight; harmless, but a flood).
Several beat instances, or overlapping runs, are safe: entries are claimed atomically.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task

from config.settings import get_settings
from worker.app import app
from worker.delivery.runtime import pipeline
from worker.logs import get_logger
from worker.triggers.reconcile import run_reconcile
from worker.triggers.tracking import shared_client, shared_sender

TASK_NAME = "idvcancel.reconcile"


@app.task(name=TASK_NAME, bind=True, max_retries=0)
def reconcile(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """One reconcile run; returns its summary (``resubmitted``, ``by_phase``, ...)."""
    log = get_logger(task_id=str(self.request.id))
    settings = get_settings()
    try:
        # The pipeline's journal: its chain head is warm and its group commit shared.
        report = run_reconcile(shared_client(settings), settings,
                               sender=shared_sender(settings), journal=pipeline().journal)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Not retried: the next beat tick is a retry, and an entry claimed but not pushed
        # is claimed again one age later.
        log.warning("reconcile_failed", error=type(exc).__name__)
        return {"ok": False, "error": {"code": "redis_unavailable", "message": str(exc)}}
    return report.summary()
