"""The baseline: bare Celery with the same broker and worker settings as idv-cancel,
running a task that does nothing. ``celery -A bench.noop_app worker``."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from config.settings import get_settings

app = Celery("bench-noop")
app.conf.update(celery_config(get_settings()))
app.conf.worker_consumer = "celery.worker.consumer:Consumer"


@app.task(name="bench.noop")
def noop(request: object) -> None:
    """Receives the same one-argument message shape, does nothing."""
