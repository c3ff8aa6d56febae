"""The private RabbitMQ node: where it looks, what it owns, and real nodes doing real
things (tests that start one are marked ``integration``; each boot takes about 5 s)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import kombu
import pytest

import tests.rabbit
from tests.rabbit import (
    declare_quorum_queue,
    drain,
    publish_confirmed,
    queue_depth,
    require_rabbitmq,
    wait_depth,
)
from worker.errors import RabbitNodeError
from worker.local import rabbitmq_node as embedded_rabbitmq
from worker.local.rabbitmq_node import CTL_DIST_PORTS, RabbitNode, find_rabbitmq_server

MACHINE_NODE = "rabbit@localhost"
MACHINE_PORTS = {5672, 25672}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A started node of this test's own (for tests that stop, kill or restart it)."""
    require_rabbitmq()
    with RabbitNode(data_dir=tmp_path / "rabbit") as started:
        yield started


def _machine_queues() -> set[str] | None:
    """Queue names on the machine's own broker, read with the machine's own CLI (which
    ``su``-s to its user and cookie); None when that node is not running or not ours to
    ask. Read-only: nothing on that broker is declared, published or changed."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if not Path(ctl).exists():
        return None
    try:
        done = subprocess.run(
            [ctl, "-q", "-n", MACHINE_NODE, "list_queues", "name"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def _epmd_names() -> str:
    epmd = shutil.which("epmd")
    if epmd is None:
        return ""
    done = subprocess.run([epmd, "-names"], capture_output=True, text=True, timeout=10,
                          check=False)
    return done.stdout


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- find_rabbitmq_server -------------------------------------------------------------


def _fake_install(root: Path) -> Path:
    """A RabbitMQ layout: the real scripts in sbin/, a symlink to them in bin/."""
    sbin = root / "rabbitmq_server-9.9" / "sbin"
    sbin.mkdir(parents=True)
    for name in ("rabbitmq-server", "rabbitmq-env", "rabbitmqctl"):
        (sbin / name).write_text("#!/bin/sh\n")
        (sbin / name).chmod(0o755)
    (root / "bin").mkdir()
    (root / "bin" / "rabbitmq-server").symlink_to(sbin / "rabbitmq-server")
    return sbin / "rabbitmq-server"


def test_find_rabbitmq_server_follows_symlinks_to_the_real_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a PATH whose rabbitmq-server is a symlink into an installation
    real = _fake_install(tmp_path)
    monkeypatch.setattr(embedded_rabbitmq, "_PACKAGE_BIN_DIRS", ())
    monkeypatch.setattr(embedded_rabbitmq, "_WELL_KNOWN_SBIN", ())
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    # When we look for the server / Then we get the script beside rabbitmq-env
    assert find_rabbitmq_server() == str(real.resolve())


def test_find_rabbitmq_server_skips_a_su_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given only a Debian-style wrapper (it su-s to the rabbitmq user; no rabbitmq-env)
    wrapper_dir = tmp_path / "sbin"
    wrapper_dir.mkdir()
    (wrapper_dir / "rabbitmq-server").write_text("#!/bin/sh\nsu rabbitmq -c ...\n")
    (wrapper_dir / "rabbitmq-server").chmod(0o755)
    monkeypatch.setattr(embedded_rabbitmq, "_PACKAGE_BIN_DIRS", ())
    monkeypatch.setattr(embedded_rabbitmq, "_WELL_KNOWN_SBIN", (wrapper_dir,))
    monkeypatch.setenv("PATH", str(wrapper_dir))
    # When / Then it is not taken for a server, and starting a node says what is missing
    assert find_rabbitmq_server() is None
    with pytest.raises(RabbitNodeError, match="no rabbitmq-server found"):
        RabbitNode(data_dir=tmp_path / "rabbit").start()


def test_the_installed_server_is_found() -> None:
    # Given a machine with RabbitMQ installed
    require_rabbitmq()
    # When we look for it / Then the real script is found, with rabbitmqctl beside it
    found = find_rabbitmq_server()
    assert found is not None
    assert (Path(found).parent / "rabbitmq-env").is_file()
    assert (Path(found).parent / "rabbitmqctl").is_file()


def test_the_fixtures_skip_where_rabbitmq_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a machine without rabbitmq-server, and a run that does not require it
    monkeypatch.setattr(tests.rabbit, "find_rabbitmq_server", lambda: None)
    monkeypatch.delenv(tests.rabbit.REQUIRE_ENV, raising=False)
    # When a broker test asks for it / Then it is skipped, naming what is missing
    with pytest.raises(pytest.skip.Exception, match="rabbitmq-server is not installed"):
        require_rabbitmq()
    # And where the run requires it (CI, which has just installed it), that fails instead
    monkeypatch.setenv(tests.rabbit.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="rabbitmq-server is not installed"):
        require_rabbitmq()


# -- what a node owns (no process started) --------------------------------------------


def test_every_path_and_port_of_a_node_is_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a caller whose environment points at the machine's broker
    monkeypatch.setenv("RABBITMQ_NODENAME", MACHINE_NODE)
    monkeypatch.setenv("RABBITMQ_MNESIA_BASE", "/var/lib/rabbitmq/mnesia")
    monkeypatch.setenv("ERL_FLAGS", "-setcookie machine")
    # When a node is set up
    node = RabbitNode(data_dir=tmp_path / "rabbit")
    env = node.env()
    # Then its name, ports and every file it uses are its own
    assert node.nodename.startswith("idvtest-") and node.nodename.endswith("@localhost")
    assert env["RABBITMQ_NODENAME"] == node.nodename
    assert "ERL_FLAGS" not in env
    assert node.port != node.dist_port
    for port in (node.port, node.dist_port):
        assert port not in CTL_DIST_PORTS and port not in MACHINE_PORTS
    paths = {k: v for k, v in env.items() if k.startswith("RABBITMQ_") and v.startswith("/")}
    paths["HOME"] = env["HOME"]
    assert {"RABBITMQ_CONF_ENV_FILE", "RABBITMQ_CONFIG_FILE", "RABBITMQ_CONFIG_FILES",
            "RABBITMQ_ADVANCED_CONFIG_FILE", "RABBITMQ_ENABLED_PLUGINS_FILE",
            "RABBITMQ_FEATURE_FLAGS_FILE", "RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE",
            "RABBITMQ_PID_FILE"} <= set(paths)
    for name, value in paths.items():
        assert Path(value).is_relative_to(node.data_dir), name
    assert node.url == f"amqp://guest:guest@127.0.0.1:{node.port}//"
    assert node.vhost_url("t-1") == f"amqp://guest:guest@127.0.0.1:{node.port}/t-1"


def test_free_ports_avoid_the_cli_tools_range(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a kernel that first offers ports the CLI tools or a machine broker use
    offered = iter([35672, 35682, 5672, 25672, 41000])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            return None

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    fake = SimpleNamespace(socket=FakeSocket, AF_INET=socket.AF_INET,
                           SOCK_STREAM=socket.SOCK_STREAM)
    monkeypatch.setattr(embedded_rabbitmq, "socket", fake)
    # When a free port is picked / Then it is the first one outside those
    assert embedded_rabbitmq._free_port() == 41000


def test_a_listener_in_config_is_refused() -> None:
    # Given / When a config that sets the AMQP listener itself / Then it is refused
    with pytest.raises(ValueError, match=r"listeners\.tcp"):
        RabbitNode(config={"listeners.tcp.default": "5672"})


# -- real nodes -----------------------------------------------------------------------


@pytest.mark.integration
def test_a_node_serves_amqp_and_leaves_the_machine_broker_alone(
    rabbit_node: RabbitNode,
) -> None:
    # Given the session's private node
    assert rabbit_node.is_running()
    queue = f"idvtest-probe-{os.getpid()}-{time.monotonic_ns()}"
    before = _machine_queues()
    # When a kombu Connection declares a queue and sends a message through its URL
    with kombu.Connection(rabbit_node.url, connect_timeout=5) as conn:
        conn.connect()
        simple = conn.SimpleQueue(queue, queue_opts={"durable": False, "auto_delete": True})
        simple.put({"hello": "rabbit"})
        # Then the message comes back
        message = simple.get(timeout=5)
        assert message.payload == {"hello": "rabbit"}
        message.ack()
        # And the node's own CLI sees the queue, under the node's own name
        assert queue in rabbit_node.ctl("list_queues", "name").split()
        after = _machine_queues()
        simple.close()
    # And the machine's broker is neither the node nor touched by it
    assert rabbit_node.nodename != MACHINE_NODE
    assert {rabbit_node.port, rabbit_node.dist_port}.isdisjoint(MACHINE_PORTS)
    if before is not None and after is not None:  # only when the machine node runs
        assert queue not in after and after == before
    for machine_dir in (Path("/var/log/rabbitmq"), Path("/var/lib/rabbitmq/mnesia")):
        if machine_dir.is_dir():
            assert not [p for p in machine_dir.iterdir() if rabbit_node.nodename in p.name]
    assert rabbit_node.log_path.is_relative_to(rabbit_node.data_dir)
    assert rabbit_node.log_path.exists()


@pytest.mark.integration
def test_rabbit_url_is_a_fresh_vhost(rabbit_node: RabbitNode, rabbit_url: str) -> None:
    # Given a queue in the node's default vhost
    queue = f"idvtest-shared-{time.monotonic_ns()}"
    declare_quorum_queue(rabbit_node.url, queue)
    try:
        # When a test looks through its rabbit_url / Then it sees none of it
        assert rabbit_url.startswith(f"amqp://guest:guest@127.0.0.1:{rabbit_node.port}/t-")
        assert queue_depth(rabbit_url, queue) is None
        assert queue_depth(rabbit_node.url, queue) == 0
    finally:
        rabbit_node.ctl("delete_queue", queue)


@pytest.mark.integration
def test_kill_9_then_restart_keeps_quorum_queue_messages(node: RabbitNode) -> None:
    # Given a quorum queue holding persistent, publisher-confirmed messages
    queue = "idvtest-durable"
    declare_quorum_queue(node.url, queue)
    bodies = [f"message-{i}".encode() for i in range(25)]
    publish_confirmed(node.url, queue, bodies)
    assert wait_depth(node.url, queue, len(bodies)) == len(bodies)
    # (ra 2.2 saves a new queue's registration up to 500 ms late; see the method)
    node.sync_quorum_registry()
    old_pid, port = node.pid, node.port
    # When the beam VM is killed with SIGKILL
    code = node.kill()
    assert code == -9
    assert not node.is_running() and not _listening(port)
    # And restarted on the same data dir
    started = time.monotonic()
    node.restart()
    print(f"restart after kill -9: {time.monotonic() - started:.1f}s")
    # Then it is a new process at the same URL, and every message is back, in order
    assert node.pid != old_pid and node.port == port
    assert wait_depth(node.url, queue, len(bodies)) == len(bodies)
    assert drain(node.url, queue) == bodies


@pytest.mark.integration
def test_stop_is_clean_and_leaves_no_process(tmp_path: Path) -> None:
    # Given a started node
    require_rabbitmq()
    node = RabbitNode(data_dir=tmp_path / "rabbit")
    started = time.monotonic()
    node.start()
    print(f"start: {time.monotonic() - started:.1f}s")
    port, pid = node.port, node.pid
    assert node.leftover_pids()  # the VM and its port helpers carry the marker
    # When it is stopped
    code = node.stop()
    # Then the VM exited cleanly and nothing of it is left: no process, no port,
    # no name registered with the (shared) epmd
    assert code == 0
    assert not node.is_running() and node.stop() is None
    deadline = time.monotonic() + 10
    while node.leftover_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.leftover_pids() == []
    assert not Path(f"/proc/{pid}").exists()
    assert not _listening(port)
    assert node.nodename.split("@")[0] not in _epmd_names()
    # And the broker logged an orderly shutdown
    assert "stopped" in node.log_path.read_text()


@pytest.mark.integration
def test_start_twice_is_an_error(node: RabbitNode) -> None:
    # Given a running node / When started again / Then it refuses
    with pytest.raises(RabbitNodeError, match="already running"):
        node.start()


@pytest.mark.integration
def test_two_nodes_run_side_by_side(tmp_path: Path) -> None:
    # Given two nodes started at once
    require_rabbitmq()
    with RabbitNode(data_dir=tmp_path / "a") as a, RabbitNode(data_dir=tmp_path / "b") as b:
        # Then their names and ports are all distinct
        assert a.nodename != b.nodename
        assert len({a.port, a.dist_port, b.port, b.dist_port}) == 4
        # And a queue on one does not exist on the other
        declare_quorum_queue(a.url, "only-on-a")
        assert queue_depth(a.url, "only-on-a") == 0
        assert queue_depth(b.url, "only-on-a") is None
    # And cleanup removed both
    assert a.leftover_pids() == [] and b.leftover_pids() == []
    assert not _listening(a.port) and not _listening(b.port)


@pytest.mark.integration
def test_a_port_taken_at_first_start_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a node whose first AMQP port is taken by someone else before it binds it
    require_rabbitmq()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = embedded_rabbitmq._free_port
        monkeypatch.setattr(
            embedded_rabbitmq, "_free_port",
            lambda avoid=frozenset(): next(picks, None) or real_free_port(avoid),
        )
        node = RabbitNode(data_dir=tmp_path / "rabbit")
        assert node.port == taken
        # When it is started
        try:
            node.start()
            # Then it came up on another port (after an eaddrinuse boot failure)
            assert node.port != taken
            assert "eaddrinuse" in node.console_path.read_text() + node.log_path.read_text()
            assert queue_depth(node.url, "nothing") is None
        finally:
            node.cleanup()


@pytest.mark.integration
def test_a_given_port_that_is_taken_fails_clearly(tmp_path: Path) -> None:
    # Given a port someone else listens on, asked for explicitly
    require_rabbitmq()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        node = RabbitNode(squatter.getsockname()[1], data_dir=tmp_path / "rabbit")
        # When / Then starting fails at once (no retry), naming the cause
        with pytest.raises(RabbitNodeError, match="exited with code") as excinfo:
            node.start()
        assert "a port is taken" in str(excinfo.value)
        assert "eaddrinuse" in str(excinfo.value)
        assert not node.is_running()
        node.cleanup()
