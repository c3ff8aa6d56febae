"""``idvcancel.checkpoint``: signs a checkpoint of the audit chain when one is due,
enqueued by Celery beat every minute (or every ``IDVCANCEL_AUDIT_CHECKPOINT_INTERVAL_SECONDS``
when shorter) on ``IDVCANCEL_AUDIT_CHECKPOINT_QUEUE``. Thin: ``worker.journal.checkpoints`` does it.

A checkpoint is due once ``IDVCANCEL_AUDIT_CHECKPOINT_RECORDS`` records wait, or the
interval has passed since the last one. It takes no arguments, like the sweep: a message
cannot choose what is signed. Operators sign one now with ``idvcancel audit checkpoint``.
A process without ``IDVCANCEL_AUDIT_SIGNING_KEY`` answers ``no_signing_key`` and signs
nothing: give the key to the one process that consumes the checkpoint queue.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import redis
from celery import Task

from config.settings import get_settings
from worker.app import app
from worker.journal import verdicts
from worker.journal.checkpoints import CheckpointError, Signer, load_signer, write_checkpoints
from worker.logs import get_logger
from worker.triggers.tracking import shared_client

TASK_NAME = "idvcancel.checkpoint"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


@functools.lru_cache(maxsize=4)
def _signer(path: str, password: str, mtime: float) -> Signer:
    """The key, read once per file version (a rotated key file is read again)."""
    return load_signer(path, password)


@app.task(name=TASK_NAME, bind=True, max_retries=0)
def checkpoint(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """One checkpoint run; returns its summary (``written``, ``uncovered``, ...)."""
    log = get_logger(task_id=str(self.request.id))
    settings = get_settings()
    if not settings.audit_signing_key:
        # A misrouted tick (IDVCANCEL_AUDIT_CHECKPOINT_QUEUE is consumed by a process
        # without the key): say so, or checkpoints stop with nothing in the logs.
        log.warning("checkpoint_no_signing_key")
        return _error("no_signing_key", "IDVCANCEL_AUDIT_SIGNING_KEY is not set here: this "
                      "process signs nothing")
    try:
        path = settings.audit_signing_key
        signer = _signer(path, settings.audit_signing_key_password.get_secret_value(),
                         os.stat(path).st_mtime)
        run = write_checkpoints(
            shared_client(settings), signer, origin=settings.audit_origin,
            archive_dir=settings.audit_archive_dir,
            max_records=settings.audit_checkpoint_records,
            interval_seconds=settings.audit_checkpoint_interval_seconds, now=time.time())
    except (CheckpointError, OSError) as exc:  # the key or the archive: a person must look
        log.error("checkpoint_failed", detail=str(exc))
        return _error("checkpoint_failed", str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Not retried: the next beat tick is a retry.
        log.warning("checkpoint_failed", error=type(exc).__name__)
        return _error("redis_unavailable", str(exc))
    if run.written or run.broken is not None:  # records were walked: a verdict to keep
        verdicts.record(shared_client(settings), "checkpoint", verdicts.Verdict(
            run.broken is None, time.time()))
    summary = run.summary()
    if run.broken is not None:
        log.error("audit_chain_broken", detail=run.broken, written=len(run.written))
    elif run.written:
        log.info("checkpoint_written", written=len(run.written),
                 seq=run.written[-1]["seq"], uncovered=run.uncovered)
    return summary
