"""Launching real Celery worker processes (for the demo and the integration tests).

A :class:`WorkerProcess` is one ``python -m celery ... worker`` subprocess, run from
the repository root with its output in a log file. Each worker is the leader of its
own process group, so :meth:`WorkerProcess.kill` takes down a prefork pool's children
too - the way an OOM kill or a lost machine would.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from worker.errors import WorkerStartError

__all__ = ["REPO_ROOT", "WorkerProcess", "WorkerStartError"]

# worker/local/procs.py -> the directory holding pyproject.toml
REPO_ROOT = Path(__file__).resolve().parents[2]

_LOG_TAIL_CHARS = 4000
# Celery logs "<nodename> ready." at INFO once the consumer is up.
_READY_RE = re.compile(r"^.*@\S* ready\.\s*$", re.MULTILINE)
_QUIET_LEVELS = frozenset({"WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"})


class WorkerProcess:
    """A real Celery worker consuming one queue, as a subprocess.

    ``env`` is merged over ``os.environ`` (``PYTHONUNBUFFERED=1`` is set unless ``env``
    says otherwise). ``wait_ready`` watches the log for Celery's ``"<node> ready."`` line,
    which is logged at INFO, so ``loglevel`` must be INFO or DEBUG for it to work.
    Used as a context manager it starts, waits until ready and stops on exit.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        concurrency: int = 8,
        pool: str = "threads",
        name: str | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        app: str = "worker.app",
        queue: str | None = None,
        loglevel: str | None = "INFO",
        cwd: Path | None = None,
        plain: bool = False,
    ) -> None:
        self.env: dict[str, str] = dict(env or {})
        self.concurrency = concurrency
        self.pool = pool
        self.name = name or f"w{secrets.token_hex(4)}@%h"
        self.app = app
        #: None: the queues of the app's configuration (on RabbitMQ, the work queue and
        #: the dead-letter queue), as the contract's plain ``celery -A worker.app worker``.
        self.queue = queue
        self.loglevel = loglevel
        #: The contract's own command, ``celery -A <app> worker`` (plus ``-l``, the queue
        #: and ``extra_args``): the pool, concurrency and node name the app configures.
        self.plain = plain
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.cwd = cwd or REPO_ROOT
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix="idvcancel-worker-", suffix=".log")
            os.close(fd)
            log_path = Path(tmp)
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- introspection ----------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv used to launch the worker."""
        if self.plain:
            return [sys.executable, "-m", "celery", "-A", self.app, "worker",
                    *(("-Q", self.queue) if self.queue else ()),
                    *(("-l", self.loglevel) if self.loglevel else ()), *self.extra_args]
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            *(("-Q", self.queue) if self.queue else ()),
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "--without-gossip",
            "--without-mingle",
            "-n",
            self.name,
            *(("-l", self.loglevel) if self.loglevel else ()),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int:
        """Process id of the worker's main process (WorkerStartError when not started)."""
        if self._proc is None:
            raise WorkerStartError("worker is not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has ended (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The whole log file (all starts of this worker), undecodable bytes replaced."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return self.log_text()[-chars:]

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the worker (does not wait; see :meth:`wait_ready`)."""
        if self.is_running():
            raise WorkerStartError(f"worker {self.name} already running (pid {self.pid})")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Only output written after this start counts for wait_ready (log files are
            # appended to when a worker is restarted).
            self._log_offset = out.tell()
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> Self:
        """Block until Celery logs ``ready.``; raise WorkerStartError with the log tail
        if the process exits first or ``timeout`` seconds pass."""
        if self._proc is None:
            raise WorkerStartError("wait_ready() before start()")
        if self.loglevel is None or self.loglevel.upper() in _QUIET_LEVELS:
            raise ValueError(
                f"loglevel {self.loglevel!r} hides Celery's 'ready.' line; use INFO or DEBUG"
            )
        deadline = time.monotonic() + timeout
        while True:
            if _READY_RE.search(self._log_since_start()):
                return self
            code = self._proc.poll()
            if code is not None:
                raise WorkerStartError(
                    f"worker {self.name} exited with code {code} before it was ready; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise WorkerStartError(
                    f"worker {self.name} (pid {self._proc.pid}) not ready after {timeout:.1f}s; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's whole process group (pool children included)."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Warm shutdown: SIGTERM (Celery finishes running tasks), wait up to ``timeout``
        seconds, then SIGKILL the process group. Returns the exit code (None if never
        started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout=10)
        # Pool children that outlived their parent would keep consuming: reap them.
        self._signal_group(signal.SIGKILL)
        return proc.returncode

    def kill(self) -> int | None:
        """Crash the worker: SIGKILL to its whole process group, no shutdown at all."""
        proc = self._proc
        if proc is None:
            return None
        self._signal_group(signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.returncode

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc and self.is_running() else "stopped"
        return f"WorkerProcess({self.name!r}, app={self.app!r}, {state}, log={self.log_path})"
