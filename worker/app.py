"""The Celery app: ``celery -A worker.app worker`` (or ``idvcancel worker``)."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from config.settings import get_settings
from worker.logs import configure
from worker.security import configure_signing

configure()
app = Celery("idvcancel", include=["tasks.process", "tasks.track", "tasks.sweep",
                                     "tasks.retention", "tasks.reconcile", "tasks.checkpoint",
                                     "tasks.confirm"])
app.conf.update(celery_config(get_settings()))
configure_signing(app, get_settings())

import worker.startup  # noqa: E402, F401 - connects the start-up checks to worker_ready
