"""``idvcancel.sweep``: the abandoned-application sweep, enqueued by Celery beat every
``IDVCANCEL_SWEEP_INTERVAL_SECONDS`` (``config.celery``). Thin: ``worker.triggers.sweep`` does it.

It takes no arguments on purpose: a message cannot move the sweep's clock (a ``now`` in
the future would cancel sessions people are still using). Tests and the dry run call
``worker.triggers.sweep`` directly.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Task

from config.settings import get_settings
from worker.app import app
from worker.logs import get_logger
from worker.triggers.sweep import run_sweep
from worker.triggers.tracking import shared_client, shared_sender

TASK_NAME = "idvcancel.sweep"


@app.task(name=TASK_NAME, bind=True, max_retries=0)
def sweep(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """One sweep run; returns its summary (``enqueued``, ``by_provider``, ``skipped``)."""
    log = get_logger(task_id=str(self.request.id))
    settings = get_settings()
    try:
        report = run_sweep(shared_client(settings), settings, sender=shared_sender(settings))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Not retried: the next beat tick is a retry, and whatever this run claimed but
        # did not enqueue is handed out again after the reclaim delay.
        log.warning("sweep_failed", error=type(exc).__name__)
        return {"ok": False, "error": {"code": "redis_unavailable", "message": str(exc)}}
    return report.summary()
