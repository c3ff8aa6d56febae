"""The Celery app: ``celery -A worker.app worker`` (or ``idvcancel worker``).

Importing this module builds the app and nothing more. Everything that can fail on a
bad environment, or that has effects, happens on Celery's signals, in the process that
runs a worker (or beat): the settings are checked (a bad ``IDVCANCEL_*`` value stops the
worker with one line naming the variable, instead of a traceback in every import),
logging is set up, messages are signed when configured, and the start-up checks run
once the worker is ready (``worker.ops.startup``). Before the task modules are imported,
metrics are pointed at files every process of the worker shares
(``worker.runner.metrics_files``).
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import beat_init, celeryd_init, import_modules, worker_ready
from pydantic import ValidationError

from config.celery import celery_config
from config.settings import Settings, describe_settings_error, get_settings
from worker.runner.metrics_files import use_metrics_files

app = Celery("idvcancel", include=["tasks.process", "tasks.track", "tasks.sweep",
                                     "tasks.retention", "tasks.reconcile", "tasks.checkpoint",
                                     "tasks.confirm"])


def _settings() -> tuple[Settings, str | None]:
    """The settings, or the defaults and why the environment's were refused."""
    try:
        return get_settings(), None
    except ValidationError as exc:
        return Settings.model_construct(), describe_settings_error(exc)


_SETTINGS, _PROBLEM = _settings()
app.conf.update(celery_config(_SETTINGS))


def _start(**_: Any) -> None:
    """Before a worker or beat starts: refuse a bad environment, set up logging and
    signing."""
    if _PROBLEM is not None:
        print(f"idvcancel: error: {_PROBLEM}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    from worker.broker.signing import configure_signing
    from worker.logs import configure

    configure()
    configure_signing(app, _SETTINGS)


def _ready(**_: Any) -> None:
    from worker.ops.startup import on_ready

    on_ready()


def _before_tasks(**_: Any) -> None:
    use_metrics_files()


import_modules.connect(_before_tasks, sender=app, weak=False)
celeryd_init.connect(_start, weak=False)
beat_init.connect(_start, weak=False)
worker_ready.connect(_ready, weak=False)
