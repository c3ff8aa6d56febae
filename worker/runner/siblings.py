"""The worker's other processes: started by its first one, watched, restarted, stopped.

The first process (the one ``celery -A worker.app worker`` started) runs the others with
its own command line, as ``python -m celery ...``: the same app, queues, options and
environment, so each is a full Celery worker with its own broker connection and
prefetch. Left out is what only one process may do: run beat (``-B``), detach, write the
pid file or the state db; each gets a node name of its own (``celery-2@host``, ...) and
``IDVCANCEL_WORKER_SIBLING`` (its number), which tells it not to start more and to leave
``/metrics`` to the first.

They share the first process's process group (a signal to the group, or a kill of it,
reaches them all, as it reaches prefork's children) and its stdout and stderr. The first
process passes its warm or cold shutdown on (SIGTERM, SIGQUIT) and waits for them; one
that dies otherwise is started again after a pause that doubles (1 s up to 30 s) while it
keeps dying young. A sibling whose first process is gone (killed, so it could pass
nothing on) shuts itself down warm: its tasks in flight end, and are acked, once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.logs import get_logger

SIBLING_VARIABLE = "IDVCANCEL_WORKER_SIBLING"
#: Options of ``celery worker`` that only one process may act on: flags, and options
#: followed by a value. ``--workdir`` is dropped because the first process is already
#: there (a relative one would be applied twice).
_ONE_PROCESS_FLAGS = frozenset({"-B", "--beat", "-D", "--detach"})
_ONE_PROCESS_OPTIONS = frozenset({"-n", "--hostname", "--pidfile", "-S", "--statedb",
                                  "-s", "--schedule", "--schedule-filename", "--workdir"})
#: A sibling that ran this long before dying starts again after the shortest pause.
_STEADY_SECONDS = 60.0
_FIRST_PAUSE_SECONDS = 1.0
_MAX_PAUSE_SECONDS = 30.0
_POLL_SECONDS = 0.2


def sibling_number() -> int | None:
    """This process's number among the worker's processes (2, 3, ...), or None in the
    first process."""
    value = os.environ.get(SIBLING_VARIABLE, "")
    return int(value) if value.isdigit() else None


def is_worker_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is Celery's command line starting a worker (and not, say, a test
    runner that started one inside itself: its command line would start something else)."""
    if not argv:
        return False
    program = Path(argv[0])
    celery = program.name == "celery" or (program.name == "__main__.py"
                                          and program.parent.name == "celery")
    return celery and "worker" in argv[1:]


def sibling_name(hostname: str, number: int) -> str:
    """``celery@host`` -> ``celery-2@host``."""
    name, at, host = hostname.partition("@")
    return f"{name}-{number}{at}{host}"


def sibling_command(argv: Sequence[str], hostname: str) -> list[str]:
    """The first process's command line ``argv`` for a sibling named ``hostname``."""
    kept: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        option, has_value, _ = arg.partition("=")
        if arg in _ONE_PROCESS_FLAGS:
            continue
        if option in _ONE_PROCESS_OPTIONS:
            if not has_value:
                next(args, None)
            continue
        if not arg.startswith("--") and arg[:2] in _ONE_PROCESS_OPTIONS:
            continue  # the value glued on: -nname@host
        kept.append(arg)
    return [sys.executable, "-m", "celery", *kept, "-n", hostname]


@dataclass
class _Slot:
    """One sibling: its process, when it started, and how long to wait before the
    next start."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = _FIRST_PAUSE_SECONDS / 2  # doubled at the first death
    due: float = 0.0


@dataclass
class Siblings:
    """Processes 2..``count`` of a worker, each started with ``command(number)``."""

    command: Callable[[int], list[str]]
    count: int
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    # Re-entrant: a shutdown signal handled in the main thread while it starts a sibling
    # asks for the running ones.
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def start(self) -> None:
        self._slots = [_Slot(number) for number in range(2, self.count + 1)]
        for slot in self._slots:
            self._launch(slot)
        threading.Thread(target=self._watch, daemon=True, name="worker-siblings").start()

    def pids(self) -> list[int]:
        """The running siblings' process ids."""
        with self._lock:
            return [s.process.pid for s in self._slots
                    if s.process is not None and s.process.poll() is None]

    def send(self, sig: signal.Signals) -> None:
        """Pass ``sig`` to every running sibling; from now on none is started again."""
        self._stopping.set()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self) -> None:
        """Warm shutdown of every sibling (a cold one already asked for stays cold: Celery
        ignores SIGTERM then); returns once all have exited."""
        # Sent even after ``send``: a sibling started while that signal was handled did
        # not get it.
        self.send(signal.SIGTERM)
        for slot in self._slots:
            if slot.process is not None:
                code = slot.process.wait()
                get_logger().info("worker process stopped", number=slot.number,
                                  pid=slot.process.pid, exit_code=code)

    def _launch(self, slot: _Slot) -> None:
        env = {**os.environ, SIBLING_VARIABLE: str(slot.number)}
        with self._lock:
            if self._stopping.is_set():
                return
            slot.process = subprocess.Popen(self.command(slot.number), env=env,
                                            stdin=subprocess.DEVNULL)
            slot.started = time.monotonic()
        get_logger().info("worker process started", number=slot.number, pid=slot.process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(_POLL_SECONDS):
            now = time.monotonic()
            for slot in self._slots:
                process = slot.process
                if process is not None and process.poll() is not None:
                    if self._stopping.is_set():
                        return
                    ran = now - slot.started
                    slot.pause = (_FIRST_PAUSE_SECONDS if ran >= _STEADY_SECONDS
                                  else min(slot.pause * 2, _MAX_PAUSE_SECONDS))
                    slot.due = now + slot.pause
                    slot.process = None
                    get_logger().warning("worker process died", number=slot.number,
                                         pid=process.pid, exit_code=process.returncode,
                                         ran_seconds=round(ran, 1), restart_in=slot.pause)
                elif process is None and now >= slot.due:
                    self._launch(slot)


def follow_first_process() -> None:
    """In a sibling: shut down warm (SIGTERM to itself) once the first process is gone."""
    first = os.getppid()

    def watch() -> None:
        while os.getppid() == first:
            time.sleep(1.0)
        get_logger().warning("first worker process gone: shutting down", pid=first)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="worker-first-process").start()
