"""``idvcancel.process``: the entry point producers enqueue. Thin on purpose."""

from __future__ import annotations

import math
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import task_revoked

from worker import keys
from worker.app import app
from worker.contract import TASK_NAME, message_digest
from worker.delivery.pipeline import RetryLater
from worker.delivery.runtime import pipeline
from worker.logs import get_logger

#: Deliveries of one message that may hit a bug in our own code before it is given up
#: (rejected on the record, the raw message kept as a dead letter).
MAX_INTERNAL_FAILURES = 5
#: Redis answers that mean "not now" rather than "never": the message goes back.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                     redis.ReadOnlyError, redis.exceptions.OutOfMemoryError)


def _task_id(task: Task, args: Any, kwargs: Any) -> str:  # type: ignore[type-arg]
    if task.request.id:
        return str(task.request.id)
    # A protocol-1 message may carry no id: key it by its content, which redelivery keeps.
    return "noid-" + message_digest(repr((args, kwargs)))[:32]


def _later(task: Task, countdown: float) -> Reject | Exception:  # type: ignore[type-arg]
    """``task.retry``, except that a retry that cannot be published puts the message
    back (Celery's own answer, ``Reject(requeue=False)``, would drop it).

    On RabbitMQ the countdown rides native delayed delivery, which counts whole seconds
    and refuses less than one (``calculate_routing_key``): round up, never down, so a
    provider's Retry-After is still honoured."""
    if task.app.conf.task_default_queue_type == "quorum":
        countdown = max(1, math.ceil(countdown))
    try:
        return task.retry(countdown=countdown, max_retries=None, throw=False)
    except Reject as exc:
        return Reject(exc, requeue=True)


def _internal_failures(task_id: str) -> int:
    """How many deliveries of this message failed on a bug (best effort, in Redis)."""
    try:
        client = pipeline().journal.client
        key = keys.internal_failures(task_id)
        count = int(client.incr(key))
        client.expire(key, 86400)
        return count
    except redis.RedisError:
        return 1


@task_revoked.connect(weak=False)
def _answer_expired(sender: Any = None, request: Any = None, expired: bool = False,
                    **_: Any) -> None:
    """Celery acks a message past its ``expires`` without running it: answer it on the
    record instead (``rejected``, ``expired``), so nothing vanishes unanswered."""
    if not expired or request is None or getattr(sender, "name", None) != TASK_NAME:
        return
    task_id = str(getattr(request, "id", "") or "")
    args, kwargs = getattr(request, "args", None) or (), getattr(request, "kwargs", None) or {}
    try:
        pipeline().reject_dead(list(args), dict(kwargs), task_id or "expired",
                               "the message arrived after the expiry its producer set"
                               " (the expires header); it was not carried out", code="expired")
    except Exception:  # noqa: BLE001 - a signal handler must not stop the worker; say so
        get_logger(task_id=task_id).exception("expired_not_recorded")


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def process(self: Task, *args: Any, **kwargs: Any) -> str:  # type: ignore[type-arg]
    """Carry out one request. Takes ``*args, **kwargs`` so that even a message with the
    wrong arguments reaches the pipeline and ends ``rejected`` instead of vanishing."""
    task_id = _task_id(self, args, kwargs)
    log = get_logger(task_id=task_id)
    try:
        step = pipeline().handle(args, kwargs, task_id)
    except REDIS_UNAVAILABLE as exc:
        # Redis went away mid-step: put the message back rather than ack it. If Redis
        # is down the reject fails too and the message stays un-acked: redelivered
        # after the visibility timeout. Either way it is not lost.
        log.warning("redis_unavailable", error=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        log.exception("internal_error")
        if _internal_failures(task_id) < MAX_INTERNAL_FAILURES:
            raise _later(self, 5.0) from exc
        pipeline().reject_unreadable(task_id, "internal_error",
                                     f"gave up after repeated internal errors"
                                     f" ({type(exc).__name__})", raw=(args, kwargs))
        return "rejected"
    if isinstance(step, RetryLater):
        raise _later(self, step.countdown)
    return step.outcome
