"""prometheus_client's multiprocess mode for every worker process.

A worker runs several processes (``worker.runner.threaded_processes``, or the children of
``-P processes``), and ``/metrics`` is served by one of them: each process's counters
must be where that one can read them. prometheus_client keeps them in files under
``PROMETHEUS_MULTIPROC_DIR``, one per process, when that variable is set before its first
metric value is made (it picks the value class when imported); the serving process sums
them (``worker.metrics``). So the directory is made here, on Celery's ``import_modules``
signal: in a worker (or beat) process, after the app was loaded and before the task
modules (and so prometheus_client) are imported.

A directory given by the user is used as it is (and should be emptied before the worker
starts: counts left in it from an earlier run are added in). Otherwise the first process
makes a private one, which its processes inherit, and removes it when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def use_metrics_files() -> str | None:
    """Make sure this process counts into files the serving process reads; their
    directory, or None when prometheus_client was imported first (it then counts in
    memory, for this process alone)."""
    path = os.environ.get(DIRECTORY_VARIABLE)
    if path:
        return path
    if "prometheus_client" in sys.modules:
        return None
    path = tempfile.mkdtemp(prefix="idvcancel-metrics-")
    os.environ[DIRECTORY_VARIABLE] = path
    owner = os.getpid()

    def remove() -> None:
        # Forked children (prefork, embedded beat) inherit atexit hooks: only the
        # process that made the directory removes it.
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path
