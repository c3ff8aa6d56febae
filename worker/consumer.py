"""A Celery consumer that answers the messages Celery itself cannot hand to a task.

Celery logs and acks a message it cannot decode, one with no task name, or one for a
task it does not know — the message is gone and nobody is told. On the ``idvcancel``
queue every message is somebody's request, so these also end ``rejected`` with a
result event, an audit record and a dead-letter entry (the raw body, cut short, for a
person to inspect). Enabled by ``worker_consumer`` in ``config/celery.py``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from celery.worker.consumer import Consumer

from worker.logs import get_logger


def _message_id(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if isinstance(task_id, str) and task_id:
        return task_id
    body = getattr(message, "body", b"")
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    # Redelivery keeps the body, so the same id: the ledger answers it once.
    return "raw-" + hashlib.sha256(raw).hexdigest()[:32]


def record_unreadable(message: Any, code: str, text: str) -> None:
    """Reject an unusable message for the record; never raises into Celery's loop."""
    from worker.services import pipeline

    task_id = _message_id(message)
    body = getattr(message, "body", b"")
    try:
        pipeline().reject_unreadable(task_id, code, text, raw=body)
    except Exception:  # noqa: BLE001 - the consumer must go on; the log says what happened
        get_logger(task_id=task_id).exception("unreadable_not_recorded", error=code)


class RecordingConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record_unreadable(message, "undecodable_message",
                          f"the message body could not be decoded ({type(exc).__name__})")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_unreadable(message, "unknown_message", "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = getattr(message, "headers", None) or {}
        name = str(headers.get("task", "?"))[:100] if isinstance(headers, dict) else "?"
        record_unreadable(message, "unknown_task", f"no task named {name!r} on this queue")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_unreadable(message, "invalid_task_message",
                          f"the task message is invalid ({type(exc).__name__})")
        super().on_invalid_task(body, message, exc)
