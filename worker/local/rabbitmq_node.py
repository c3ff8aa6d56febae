"""A private RabbitMQ node that we start ourselves, for the tests (and later the demo).

Broker tests need a genuine RabbitMQ (quorum queues, publisher confirms, redelivery after
a crash), and they must never touch the machine's own broker, which on a developer box
or a CI image may already run as ``rabbit@localhost`` on 5672/25672. So a
:class:`RabbitNode` owns everything a node reads or writes: its node name
(``idvtest-<random>@localhost``), AMQP port, Erlang distribution port, data and log
directories, config file, conf.d directory, enabled-plugins file (``[].``), feature-flags
file, pid file, Erlang cookie (``$HOME`` is its data dir) and even the
``rabbitmq-env.conf`` it sources - none of them is the machine's.

How it runs, and why:

* We run the *real* ``rabbitmq-server`` script (Debian: ``/usr/lib/rabbitmq/bin/``), not
  Debian's ``/usr/sbin/rabbitmq-server`` wrapper: the wrapper ``su``-s to the
  ``rabbitmq`` user (so every directory would have to be chowned, and pytest's
  ``/tmp/pytest-of-root`` is not even traversable for that user), ``cd``-s into
  ``/var/lib/rabbitmq`` and writes ``/var/log/rabbitmq/startup_log`` - the machine's
  files. The node runs as whoever runs the tests.
* It runs in the foreground as our child, not ``-detached``: with
  ``RABBITMQ_ALLOW_INPUT=1`` the script ``exec``-s the Erlang VM instead of keeping a
  signal-forwarding shell, so :attr:`RabbitNode.pid` *is* the beam process. Then
  :meth:`~RabbitNode.stop` is a SIGTERM (the VM runs ``init:stop()``: a clean broker
  shutdown), :meth:`~RabbitNode.kill` is a real ``kill -9`` with its exit status, and
  nothing has to be found through a pid file or ``rabbitmqctl stop``. ``-noinput`` is
  passed back explicitly (``RABBITMQ_ALLOW_INPUT`` drops it) so the VM never reads stdin.
* Ports are picked by binding to port 0, avoiding 35672-35682: the CLI tools
  (``rabbitmqctl``) take their own distribution ports from that range, and a node
  listening there fails (or makes every ``rabbitmqctl`` fail) with ``eaddrinuse``. A
  first start that still loses a port race retries on fresh ports, like
  :class:`worker.local.redis_server.RedisServer`.
* The node is ready when an AMQP handshake succeeds *and* the server says its
  ``cluster_name`` is our node name - so a port race can never make us talk to someone
  else's broker - and the log says the boot finished (``rabbitmqctl`` works then too).

Public API: :func:`find_rabbitmq_server`, :class:`RabbitNode`, :class:`RabbitNodeError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import amqp

from worker.errors import RabbitNodeError

__all__ = ["RabbitNode", "RabbitNodeError", "find_rabbitmq_server"]

LOOPBACK = "127.0.0.1"
#: RabbitMQ's built-in account, which only accepts connections from loopback.
GUEST_USER = "guest"
GUEST_PASSWORD = "guest"  # noqa: S105 - the broker's public default, not a secret
#: Boot takes about 5 s on an idle machine; two busy shared cores can triple that.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CTL_TIMEOUT_S = 60.0
#: The CLI tools' own distribution ports (RABBITMQ_CTL_DIST_PORT_MIN .. MIN + 10).
CTL_DIST_PORTS = range(35672, 35683)
#: The well-known ports of a machine broker (epmd, AMQP, AMQPS, distribution): never ours,
#: even while nothing listens on them.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 25672})
_PORT_ATTEMPTS = 3
_LOG_TAIL_CHARS = 3000
#: Logged by every RabbitMQ since 3.7 at the very end of the boot.
_BOOT_DONE = "Server startup complete"
#: How a boot fails on a taken AMQP port, and on a taken distribution port.
_PORT_TAKEN = re.compile(r"eaddrinuse|dist_port_already_used")
#: Set in the node's environment so that its leftovers can be found in /proc.
_MARKER = "IDVCANCEL_RABBIT_NODE"
#: Debian/Ubuntu put the real scripts here and a ``su`` wrapper on PATH (/usr/sbin).
_PACKAGE_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"),)
_WELL_KNOWN_SBIN = (Path("/usr/sbin"), Path("/usr/local/sbin"), Path("/opt/homebrew/sbin"))

#: The node's rabbitmq.conf (besides cluster_name). The AMQP listener is *not* here: it
#: comes from RABBITMQ_NODE_PORT, and ``listeners.tcp.*`` beside it makes the node listen
#: twice (or fail on its own port).
_BASE_CONFIG: dict[str, str] = {
    # A CI disk with little space left must not block every publisher (default 50MB).
    "disk_free_limit.absolute": "1MB",
    # Written out, not left to the version's default: Celery holds countdown messages
    # unacknowledged, and the broker closes the channel of a consumer that overstays this.
    "consumer_timeout": "1800000",
}


class _PortTakenError(RabbitNodeError):
    """The node died at boot because one of its ports was taken (``eaddrinuse``)."""


def _is_real_server_script(path: Path) -> bool:
    """True for RabbitMQ's own ``rabbitmq-server`` (it sources ``rabbitmq-env`` beside
    itself); False for a distribution wrapper such as Debian's ``su`` script."""
    return (
        path.is_file()
        and os.access(path, os.X_OK)
        and (path.parent / "rabbitmq-env").is_file()
        and (path.parent / "rabbitmqctl").is_file()
    )


def find_rabbitmq_server() -> str | None:
    """Path of RabbitMQ's real ``rabbitmq-server`` script, or None when not installed.

    Looks in the Debian package's directory, then on PATH and in the usual ``sbin``
    directories (which a non-root PATH often lacks), following symlinks (Homebrew,
    generic-unix tarballs) to the script that has ``rabbitmq-env`` beside it.
    """
    candidates = [d / "rabbitmq-server" for d in _PACKAGE_BIN_DIRS]
    on_path = shutil.which("rabbitmq-server")
    if on_path:
        candidates.append(Path(on_path))
    candidates.extend(d / "rabbitmq-server" for d in _WELL_KNOWN_SBIN)
    for candidate in candidates:
        with contextlib.suppress(OSError):
            real = candidate.resolve()
            if _is_real_server_script(real):
                return str(real)
    return None


def _free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A loopback TCP port free right now, outside the CLI tools' range and ``avoid``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port not in CTL_DIST_PORTS and port not in _RESERVED_PORTS and port not in avoid:
            return port
    raise RabbitNodeError("no free loopback port outside 35672-35682 after 100 tries")


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return text[-chars:] if text else "(empty)"


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RabbitNode:
    """One private ``rabbitmq-server`` node on ``127.0.0.1``, run as our child process.

    Without ``data_dir`` the node works in a private temporary directory that is kept
    across :meth:`restart` (node name and ports are kept too, so durable queues and
    their persistent messages come back) and removed by :meth:`cleanup`, by the context
    manager, or when the object is garbage collected. ``config`` adds ``rabbitmq.conf``
    lines (``key = value``); ``listeners.tcp.*`` is refused since the port is ours.

    Files under ``data_dir``: ``rabbitmq.conf``, ``enabled_plugins``, ``feature_flags``,
    ``rabbitmq.pid``, ``mnesia/`` (queues, messages), ``log/<node>.log`` (the broker's
    log, :attr:`log_path`) and ``console.log`` (the VM's stdout and stderr).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        dist_port: int | None = None,
        data_dir: Path | None = None,
        nodename: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(config or {})
        clashing = sorted(k for k in extra if k.startswith("listeners.tcp"))
        if clashing:
            raise ValueError(f"{clashing}: the AMQP listener is set from `port`, not config")
        self.config: dict[str, str] = {**_BASE_CONFIG, **extra}
        self._ports_were_given = port is not None or dist_port is not None
        self._port = port if port is not None else _free_port()
        self._dist_port = (
            dist_port if dist_port is not None else _free_port(frozenset({self._port}))
        )
        self.nodename = nodename or f"idvtest-{secrets.token_hex(4)}@localhost"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="idvcancel-rabbit-")
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
        """The AMQP port."""
        return self._port

    @property
    def dist_port(self) -> int:
        """The Erlang distribution port (what ``rabbitmqctl`` talks to)."""
        return self._dist_port

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT//`` (the default vhost ``/``)."""
        return self.vhost_url("/")

    def vhost_url(self, vhost: str) -> str:
        """The AMQP URL of one of this node's vhosts (``/`` is written ``//``)."""
        path = "/" if vhost == "/" else quote(vhost, safe="")
        return f"amqp://{GUEST_USER}:{GUEST_PASSWORD}@{LOOPBACK}:{self._port}/{path}"

    @property
    def log_path(self) -> Path:
        """The broker's own log (boot, queues, shutdown)."""
        return self.data_dir / "log" / f"{self.nodename}.log"

    @property
    def console_path(self) -> Path:
        """The VM's stdout and stderr: boot failures that never reach :attr:`log_path`."""
        return self.data_dir / "console.log"

    @property
    def pid(self) -> int:
        """Process id of the running beam VM (RabbitNodeError when not started)."""
        if self._proc is None:
            raise RabbitNodeError("rabbitmq node is not started")
        return self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- files, environment, commands -------------------------------------------------

    def _server_script(self) -> Path:
        found = find_rabbitmq_server()
        if found is None:
            raise RabbitNodeError(
                "no rabbitmq-server found (looked in /usr/lib/rabbitmq/bin, on PATH and in "
                "/usr/sbin, /usr/local/sbin); install the distribution's rabbitmq-server "
                "package (apt-get install rabbitmq-server), as .ci/run does"
            )
        return Path(found)

    def env(self) -> dict[str, str]:
        """The environment of the node and of :meth:`ctl`: every path and port is ours.

        The caller's ``RABBITMQ_*`` and ``ERL_*`` variables are dropped so nothing of a
        machine-wide setup leaks in; ``HOME`` is the data dir, so the Erlang cookie is
        ours and ``rabbitmqctl`` run with this environment reaches only this node.
        """
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k not in {"NODENAME", "HOME"}
        }
        d = self.data_dir
        return {
            **base,
            "HOME": str(d),
            _MARKER: self.nodename,
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self._port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),  # the script adds ".conf"
            "RABBITMQ_CONFIG_FILES": str(d / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_MOTD_FILE": str(d / "motd"),
            # Exec the VM (no signal-forwarding shell), but never read stdin.
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_START_ARGS": "-noinput",
            # Distribution on loopback only (it listens on 0.0.0.0 otherwise).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # If no epmd runs yet, the one our VM starts listens on loopback only.
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
        }

    def _write_files(self) -> None:
        d = self.data_dir
        for sub in ("mnesia", "log", "conf.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # cluster_name is what a client sees in the handshake: set to the node name, it
        # lets _answers() tell this node from any other broker on the same port.
        settings = {"cluster_name": self.nodename, **self.config}
        (d / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (d / "enabled_plugins").write_text("[].\n")
        # Sourced by the script instead of /etc/rabbitmq/rabbitmq-env.conf: empty.
        (d / "rabbitmq-env.conf").write_text("# private node: no machine-wide settings\n")

    def command(self) -> list[str]:
        """The argv used to launch the node (its settings are in :meth:`env`)."""
        return [str(self._server_script())]

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_S) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` and return its stdout.

        Raises:
            RabbitNodeError: when it exits non-zero or takes longer than ``timeout``.
        """
        ctl = self._server_script().parent / "rabbitmqctl"
        argv = [str(ctl), "-q", "-n", self.nodename, *args]
        try:
            done = subprocess.run(
                argv,
                env=self.env(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} took over {timeout}s") from exc
        if done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def add_vhost(self, vhost: str) -> str:
        """Create ``vhost`` with full rights for ``guest``; return its AMQP URL."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, GUEST_USER, ".*", ".*", ".*")
        return self.vhost_url(vhost)

    def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` with every queue and message in it."""
        self.ctl("delete_vhost", vhost)

    def sync_quorum_registry(self) -> None:
        """Write the node's quorum-queue name registry to disk now.

        Ra before mid-2024 (ra 2.2 in RabbitMQ 3.10) keeps a new quorum queue's
        registration in a dets table that is saved only after 500 ms without changes. A
        ``kill -9`` inside that window loses it: the restarted node starts an empty,
        leaderless member for the queue, and the messages already on disk are never
        seen again. A crash test that declares a quorum queue and kills the node at once
        calls this in between (a no-op where ra syncs by itself).
        """
        self.ctl(
            "eval",
            "dets:sync(maps:get(directory_rev, maps:get(names, "
            "ra_system:fetch(quorum_queues)))).",
        )

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> Self:
        """Launch the node and wait (bounded) until it accepts AMQP connections."""
        if self.is_running():
            raise RabbitNodeError(f"rabbitmq node {self.nodename} already running (pid {self.pid})")
        self._write_files()
        # Ports we picked ourselves may be taken between picking and binding; on the very
        # first start we may pick others. Restarts keep them: the URL must not change.
        may_repick = not self._ports_were_given and not self._started_once
        attempts = _PORT_ATTEMPTS if may_repick else 1
        for attempt in range(attempts):
            try:
                self._launch(timeout)
            except _PortTakenError:
                if attempt + 1 >= attempts:
                    raise
                self._port = _free_port()
                self._dist_port = _free_port(frozenset({self._port}))
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, timeout: float) -> None:
        argv = self.command()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.console_path, "ab") as out:
            console_offset = out.tell()
            proc = subprocess.Popen(
                argv,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own session: a Ctrl-C aimed at pytest must not take the broker down
                # before the workers using it are stopped.
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                output = self._since(self.console_path, console_offset) + self._since(
                    self.log_path, log_offset
                )
                taken = [ln for ln in output.splitlines() if _PORT_TAKEN.search(ln)]
                cause = f"a port is taken: {taken[0].strip()[:300]}\n" if taken else ""
                raise (_PortTakenError if taken else RabbitNodeError)(
                    f"rabbitmq node {self.nodename} exited with code {proc.returncode} while "
                    f"starting (AMQP port {self._port}, dist port {self._dist_port}); "
                    f"{cause}output tail:\n{output[-_LOG_TAIL_CHARS:]}"
                )
            if _BOOT_DONE in self._since(self.log_path, log_offset) and self._answers():
                return
            if time.monotonic() >= deadline:
                self._reap(proc, signal.SIGKILL)
                self._proc = None
                raise RabbitNodeError(
                    f"rabbitmq node {self.nodename} on port {self._port} was not ready within "
                    f"{timeout:.1f}s; log tail:\n{_tail(self.log_path)}\n"
                    f"console tail:\n{_tail(self.console_path)}"
                )
            time.sleep(0.1)

    @staticmethod
    def _since(path: Path, offset: int) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _answers(self) -> bool:
        """An AMQP handshake succeeds and the broker is this node (not a port thief)."""
        conn = amqp.Connection(
            host=f"{LOOPBACK}:{self._port}",
            userid=GUEST_USER,
            password=GUEST_PASSWORD,
            virtual_host="/",
            connect_timeout=1.0,
        )
        try:
            conn.connect()
            properties: dict[str, object] = getattr(conn, "server_properties", None) or {}
            cluster = _text(properties.get("cluster_name", ""))
        except Exception:  # noqa: BLE001 - refused, reset, 541 while booting: not ready yet
            with contextlib.suppress(Exception):
                conn.collect()
            return False
        with contextlib.suppress(Exception):
            conn.close()
        return cluster == self.nodename

    @staticmethod
    def _reap(
        proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = STOP_TIMEOUT_S
    ) -> int:
        """Signal the VM, wait for it, SIGKILL it if it overstays; then sweep its group."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        # The port helpers (erl_child_setup and its children) leave on their own when the
        # VM's pipes close; anything still in the VM's process group goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Clean shutdown: SIGTERM (queues and message stores are closed properly), wait
        up to ``timeout`` seconds, then SIGKILL.

        Returns the VM's exit code (0 after a clean stop), None when it was not running.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return self._reap(proc, signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """``kill -9`` of the beam VM: a crash, nothing is flushed or closed.

        Returns the exit code (``-SIGKILL``), None when it was not running.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        return self._reap(proc, signal.SIGKILL)

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> Self:
        """Stop (if running), then start again with the same name, ports and data dir."""
        self.stop()
        return self.start(timeout=timeout)

    def leftover_pids(self) -> list[int]:
        """Processes still carrying this node's environment (Linux; [] elsewhere).

        The shared ``epmd`` is not counted: it may have been started by this node's VM,
        serves every Erlang node on the machine and is meant to stay.
        """
        marker = f"{_MARKER}={self.nodename}".encode()
        found: list[int] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if marker in _environ_of(pid).split(b"\0") and _comm_of(pid) != "epmd":
                    found.append(pid)
        return found

    def cleanup(self) -> None:
        """Stop the node, kill anything it left behind, remove its temporary data dir."""
        self.stop()
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
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
        return f"RabbitNode({self.nodename}, {self.url}, dist={self._dist_port}, {state})"
