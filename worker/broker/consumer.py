"""A Celery consumer that answers the messages Celery itself cannot hand to a task.

Celery logs and acks a message it cannot decode, one with no task name, or one for a
task it does not know — the message is gone and nobody is told. On the ``idvcancel``
queue every message is somebody's request, so these also end ``rejected`` with a
result event, an audit record and a dead-letter entry (the raw body, cut short, for a
person to inspect). Enabled by ``worker_consumer`` in ``config/celery.py``. Queue items
that are not even a kombu envelope reach it too, wrapped by ``worker.broker.redis_transport``.

Once answered, such a message is acked, never rejected (see ``settle``): on RabbitMQ a
rejected message goes to the queue's dead-letter exchange and would come back to be
answered a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.utils.log import get_logger as celery_logger
from celery.worker.consumer import Consumer
from vine import promise

from config.broker import DEAD_LETTER_EXCHANGE
from worker.broker.redis_transport import unreadable_reason
from worker.contract import TASK_NAME, message_digest
from worker.delivery.runtime import pipeline
from worker.logs import get_logger

logger = celery_logger(__name__)


def _message_id(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if isinstance(task_id, str) and task_id:
        return task_id
    body = getattr(message, "body", b"")
    # Redelivery keeps the body, so the same id: the ledger answers it once.
    return "raw-" + message_digest(body if isinstance(body, bytes) else str(body))[:32]


def record_unreadable(message: Any, code: str, text: str) -> None:
    """Reject an unusable message for the record; never raises into Celery's loop."""
    task_id = _message_id(message)
    body = getattr(message, "body", b"")
    try:
        pipeline().reject_unreadable(task_id, code, text, raw=body)
    except Exception:  # noqa: BLE001 - the consumer must go on; the log says what happened
        get_logger(task_id=task_id).exception("unreadable_not_recorded", error=code)


def settle(message: Any, connection_errors: tuple[type[BaseException], ...]) -> None:
    """Take a message that is answered on the record off the queue: ack it.

    Not ``reject``, which is what Celery does with the messages it refuses: on RabbitMQ a
    rejected message goes to the quorum queue's dead-letter exchange (``idvcancel.dead``),
    which every worker consumes and answers as given up by the broker - a second answer
    for one message (a ``duplicate`` audit record, or, for a body that holds a request, a
    second result under its request id). On Redis the two are the same (kombu drops a
    rejected message unless it is requeued)."""
    message.ack_log_error(logger, connection_errors)


class _AckInsteadOfReject:
    """A message as Celery's own ``on_unknown_*``/``on_invalid_task`` see it once we have
    answered it: their log lines and signals stay, their ``reject`` becomes ``settle``."""

    def __init__(self, message: Any, connection_errors: tuple[type[BaseException], ...]):
        self._message = message
        self._connection_errors = connection_errors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        if requeue:  # back on the queue, unanswered: not ours to change
            self._message.reject_log_error(logger, errors, requeue=True)
        else:
            settle(self._message, self._connection_errors)


def _death(message: Any) -> tuple[str, str]:
    """Why RabbitMQ dead-lettered a message, from its ``x-death`` header: the error code
    and the text of its ``rejected`` result (best effort: the delivery limit by default)."""
    headers = getattr(message, "headers", None) or {}
    deaths = headers.get("x-death") if isinstance(headers, dict) else None
    reason = deaths[0].get("reason") if (
        isinstance(deaths, list) and deaths and isinstance(deaths[0], dict)) else None
    if reason in ("expired", b"expired"):
        return "expired", ("the message expired in the queue (the expiry its producer set)"
                           " before a worker took it; it was not carried out")
    return "delivery_limit", ("the broker gave this message up (its delivery limit): each"
                              " delivery ended without an answer, as when a worker dies on"
                              " it; it was not carried out")


def record_dead(message: Any) -> None:
    """Answer a message RabbitMQ dead-lettered to ``idvcancel.dead``; never raises."""
    task_id = _message_id(message)
    code, why = _death(message)
    try:
        body = message.decode()
        if not (isinstance(body, list | tuple) and len(body) == 3
                and isinstance(body[0], list | tuple) and isinstance(body[1], dict)):
            raise ValueError("not a task body")
        pipeline().reject_dead(list(body[0]), dict(body[1]), task_id, why, code=code)
    except Exception:  # noqa: BLE001 - unreadable as a task: answered as such below
        record_unreadable(message, code, why)


def is_dead_lettered(message: Any) -> bool:
    info = getattr(message, "delivery_info", None) or {}
    return isinstance(info, dict) and info.get("exchange") == DEAD_LETTER_EXCHANGE


def shape_problem(message: Any) -> str | None:
    """Why an ``idvcancel.process`` message cannot be handed to the task, or None.

    Celery unpacks ``[args, kwargs, embed]`` and a few headers before our code runs; a
    message that breaks that unpacking would otherwise raise in the consumer loop and
    stop the worker (and the next one, as it comes back). A protocol-1 message (no
    ``task`` header: the body is an object naming the task) that Celery unpacks but
    cannot call - arguments that are not a list, say - is worse: the call fails inside
    Celery's tracer, which acks it, and it is gone without a result. Messages that do
    not decode are left to Celery's own decode-error path.
    """
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        return None
    if "task" not in headers:  # where Celery looks for a protocol-1 body
        return _protocol1_problem(message)
    if headers.get("task") != TASK_NAME:
        return None
    if not _pair_or_none(headers.get("timelimit")):
        return "the timelimit header is not a pair"
    try:
        body = message.decode()
    except Exception:  # noqa: BLE001 - Celery's on_decode_error answers these
        return None
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return "the body is not [args, kwargs, embed]"
    args, kwargs, embed = body
    problem = _arguments_problem(args, kwargs)
    if problem is None and embed is not None and not isinstance(embed, dict):
        return "the embed part of the body is not an object"
    return problem


def _protocol1_problem(message: Any) -> str | None:
    try:
        body = message.decode()
    except Exception:  # noqa: BLE001 - Celery's on_decode_error answers these
        return None
    if not isinstance(body, dict) or body.get("task") != TASK_NAME:
        return None  # not ours: Celery answers it as an unknown message or task
    if not _pair_or_none(body.get("timelimit")):
        return "the timelimit field is not a pair"
    # Celery's own defaults for a protocol-1 body without them (celery.worker.strategy).
    return _arguments_problem(body.get("args", ()), body.get("kwargs", {}))


def _pair_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple) and len(value) == 2)


def _arguments_problem(args: Any, kwargs: Any) -> str | None:
    if not isinstance(args, list | tuple):
        return "the task arguments are not a list"
    if not isinstance(kwargs, dict) or "self" in kwargs:
        return "the task keyword arguments are not an object of plain names"
    return None


class RecordingConsumer(Consumer):
    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        handler = super().create_task_handler(promise)
        connection_errors: tuple[type[BaseException], ...] = tuple(
            getattr(self, "connection_errors", ()))

        def on_task_received(message: Any) -> Any:
            if is_dead_lettered(message):
                # Recorded, never run: running it is what killed its workers.
                record_dead(message)
                message.ack()
                return None
            problem = shape_problem(message)
            if problem is not None:
                record_unreadable(message, "invalid_task_message", problem)
                settle(message, connection_errors)
                return None
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the worker
                record_unreadable(message, "invalid_task_message",
                                  f"Celery could not take the message ({type(exc).__name__})")
                if not message.acknowledged:
                    settle(message, connection_errors)
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        reason = unreadable_reason(message)
        if reason is None:
            record_unreadable(message, "undecodable_message",
                              f"the message body could not be decoded ({type(exc).__name__})")
            super().on_decode_error(message, exc)
            return
        # A queue item the transport had to wrap (worker.broker.redis_transport): the reason
        # is known,
        # so no CRITICAL with a traceback and a dump of the raw bytes (which may be large or
        # hold personal data; the dead letter keeps them, cut short). Acked like Celery does.
        record_unreadable(message, "unreadable_envelope",
                          f"the queue item is not a message envelope: {reason}")
        get_logger(task_id=_message_id(message)).warning(
            "unreadable_envelope", reason=reason, size=len(getattr(message, "body", b"")))
        message.ack()

    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        return tuple(getattr(self, "connection_errors", ()))

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_unreadable(message, "unknown_message", "not a Celery task message")
        super().on_unknown_message(body, _AckInsteadOfReject(message, self._connection_errors()))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = getattr(message, "headers", None) or {}
        name = str(headers.get("task", "?"))[:100] if isinstance(headers, dict) else "?"
        record_unreadable(message, "unknown_task", f"no task named {name!r} on this queue")
        connection_errors = self._connection_errors()
        try:
            super().on_unknown_task(body, _AckInsteadOfReject(message, connection_errors), exc)
        except connection_errors:
            raise
        except Exception:  # noqa: BLE001 - answered already; see below
            # Celery names a message without an id header by decoding its body, which
            # raises for a body it cannot decode: the message would be recorded a second
            # time (a stray "duplicate") by the handler's catch-all. Settle it here.
            if not message.acknowledged:
                settle(message, connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_unreadable(message, "invalid_task_message",
                          f"the task message is invalid ({type(exc).__name__})")
        super().on_invalid_task(body, _AckInsteadOfReject(message, self._connection_errors()),
                                exc)
