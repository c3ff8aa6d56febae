"""``idvcancel.retention``: forgets the intake index entries that no longer matter and
moves audit records older than ``IDVCANCEL_AUDIT_RETENTION_SECONDS`` from Redis to the
archive files, enqueued by Celery beat every ``IDVCANCEL_RETENTION_INTERVAL_SECONDS``
(``config.celery``). Thin: ``worker.ops.retention`` does it. (Ledgers and result events are
bounded as they are written: the journal's ``EXPIRE`` and ``XADD MAXLEN ~``.)

It takes no arguments on purpose, like the sweep: a message cannot move the cut.
Operators run the same thing by hand with ``idvcancel audit archive``.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import Task

from config.settings import get_settings
from worker import keys
from worker.app import app
from worker.errors import ArchiveBusy, ArchiveError
from worker.journal import verdicts
from worker.journal.archive import archive_audit
from worker.logs import get_logger
from worker.ops.retention import trim_intake
from worker.triggers.tracking import shared_client

TASK_NAME = "idvcancel.retention"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


@app.task(name=TASK_NAME, bind=True, max_retries=0)
def retention(self: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """One retention run; returns its summary (``archived``, ``files``, ``head``, ...)."""
    log = get_logger(task_id=str(self.request.id))
    settings = get_settings()
    client = shared_client(settings)
    try:
        # First, and whatever the archive's fate: the index needs no lock and no disk.
        intake = trim_intake(client, settings.ledger_ttl_seconds, time.time())
        log.info("intake_trimmed", **intake.summary())
        report = archive_audit(client, settings.audit_archive_dir,
                               settings.audit_retention_seconds, time.time())
    except ArchiveBusy as exc:  # another run is at it: the next tick carries on
        log.info("retention_busy", detail=str(exc))
        return _error("busy", str(exc))
    except ArchiveError as exc:  # a wrong or partial archive directory: a person must look
        log.error("retention_refused", detail=str(exc))
        verdicts.record(client, "retention", verdicts.Verdict(False, time.time()))
        return _error("archive_mismatch", str(exc))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Not retried: the next beat tick is a retry, and nothing is trimmed before the
        # files are durable.
        log.warning("retention_failed", error=type(exc).__name__)
        return _error("redis_unavailable", str(exc))
    except OSError as exc:  # the disk: full, read-only, permissions
        log.error("retention_failed", error=type(exc).__name__, detail=str(exc))
        return _error("archive_io", str(exc))
    if report.archived or report.broken is not None:  # records were walked: a verdict
        verdicts.record(client, "retention", verdicts.Verdict(report.broken is None,
                                                              time.time()))
    summary = report.summary()
    summary["intake"] = intake.summary()
    summary["audit_length"] = int(client.xlen(keys.AUDIT))
    summary["results_length"] = int(client.xlen(keys.RESULTS))
    if report.broken is not None:
        log.error("audit_chain_broken", detail=report.broken.describe(),
                  archived=report.archived)
    else:
        log.info("retention_done", archived=report.archived, files=summary["files"],
                 audit_length=summary["audit_length"])
    return summary
