"""``idvcancel.process``: the entry point producers enqueue. Thin on purpose."""

from __future__ import annotations

from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from worker.app import app
from worker.contract import TASK_NAME
from worker.logs import get_logger
from worker.pipeline import RetryLater
from worker.services import pipeline

#: Retries of a delivery that hit a bug in our own code before it is given up.
MAX_INTERNAL_RETRIES = 5


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def process(self: Task, *args: Any, **kwargs: Any) -> str:  # type: ignore[type-arg]
    """Carry out one request. Takes ``*args, **kwargs`` so that even a message with the
    wrong arguments reaches the pipeline and ends ``rejected`` instead of vanishing."""
    task_id = str(self.request.id)
    try:
        step = pipeline().handle(args, kwargs, task_id)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Redis went away mid-step: put the message back rather than ack it. If Redis
        # is down the reject fails too and the message stays un-acked: redelivered
        # after the visibility timeout. Either way it is not lost.
        get_logger(task_id=task_id).warning("redis_unavailable", error=type(exc).__name__)
        raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        get_logger(task_id=task_id).exception("internal_error")
        raise self.retry(exc=exc, countdown=5, max_retries=MAX_INTERNAL_RETRIES) from exc
    if isinstance(step, RetryLater):
        raise self.retry(countdown=step.countdown, max_retries=None)
    return step.outcome
