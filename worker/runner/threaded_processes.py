"""``ThreadedProcesses``: the pool of the plain ``celery -A worker.app worker``.

Celery's thread pool (``-c``, else ``IDVCANCEL_WORKER_THREADS``, threads), and in the
first process of a worker command the start of the worker's other processes
(``IDVCANCEL_WORKER_PROCESSES``, default one per core this process may use): each of
those is a full Celery worker on this same pool (``worker.runner.siblings``).

Why not prefork children with threads: billiard's children run one task at a time (the
parent hands each a task and waits for its result), so they cannot hide a provider's
latency; and why not Celery's threads pool alone: one process runs Python on one core.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from celery.concurrency.thread import TaskPool
from celery.signals import worker_shutting_down
from celery.utils.sysinfo import cpu_budget  # type: ignore[attr-defined]  # Celery 5.7; the stubs predate it

from config.settings import get_settings
from worker.logs import get_logger
from worker.runner.siblings import (
    Siblings,
    follow_first_process,
    is_worker_command,
    sibling_command,
    sibling_name,
    sibling_number,
)

#: Celery's shutdown kinds -> the signal that starts the same shutdown in a sibling.
#: SIGTERM for warm (Celery ignores a repeated one; SIGINT, Ctrl-C from a terminal that
#: reached the sibling too, would count twice and turn cold).
_PASSED_ON = {"Warm": signal.SIGTERM, "Cold": signal.SIGQUIT}


def worker_processes() -> int:
    """``IDVCANCEL_WORKER_PROCESSES``, or the cores this process may use (its CPU
    affinity, capped by a cgroup CPU quota, as Celery counts them)."""
    return get_settings().worker_processes or cpu_budget(use_cgroup_quota=True).count


class ThreadedProcesses(TaskPool):
    """Celery's thread pool; in a worker's first process, also its other processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.siblings: Siblings | None = None

    def on_start(self) -> None:
        super().on_start()
        if sibling_number() is not None:
            follow_first_process()
            return
        count = worker_processes()
        if count <= 1:
            return
        if not is_worker_command(sys.argv):
            get_logger().warning("worker processes", started=1, configured=count,
                                 reason="not started by a celery worker command line")
            return
        # The Pool bootstep passes (app, hostname) to every pool, for prefork's children.
        hostname = str(self.options["initargs"][1])
        argv = list(sys.argv)
        self.siblings = Siblings(
            lambda number: sibling_command(argv, sibling_name(hostname, number)), count)
        worker_shutting_down.connect(self._pass_on, weak=False)
        self.siblings.start()

    def _pass_on(self, how: str = "Warm", **_: Any) -> None:
        """On the first process's shutdown signal: the same shutdown in the others."""
        if self.siblings is not None:
            self.siblings.send(_PASSED_ON.get(how, signal.SIGTERM))

    def on_stop(self) -> None:
        super().on_stop()
        if self.siblings is not None:
            self.siblings.stop()
            worker_shutting_down.disconnect(self._pass_on)

    def on_terminate(self) -> None:
        if self.siblings is not None:
            self.siblings.send(signal.SIGQUIT)
            self.siblings.stop()
        super().on_terminate()
