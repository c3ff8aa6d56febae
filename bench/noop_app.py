"""The baseline: bare Celery with the same broker and worker settings as idv-cancel,
running a task that does nothing. ``celery -A bench.noop_app worker``.

Pool and concurrency are Celery's own defaults (prefork, one child per core), so that the
plain command starts bare Celery the way Celery starts by itself; the throughput part of
``bench/run.py`` passes ``-P``/``-c`` and so compares like with like.
"""

from __future__ import annotations

import os

from celery import Celery

from config.celery import celery_config
from config.settings import get_settings

app = Celery("bench-noop")
app.conf.update(celery_config(get_settings()))
app.conf.worker_consumer = "celery.worker.consumer:Consumer"
app.conf.worker_pool = "prefork"
app.conf.worker_concurrency = None
if os.environ.get("BENCH_KOMBU_TRANSPORT"):
    # Celery as shipped: kombu's own Redis transport, without our batch pop
    # (worker/broker/redis_transport.py), for the CPU benchmark's bare-Celery line.
    app.conf.broker_transport = None


@app.task(name="bench.noop")
def noop(request: object) -> None:
    """Receives the same one-argument message shape, does nothing."""


@app.task(name="idvcancel.process")
def noop_process(request: object) -> None:
    """The same, under our task's name: a request sent with ``Producer.submit_many``."""
