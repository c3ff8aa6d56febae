"""The contract's plain command, ``celery -A worker.app worker`` with no pool or
concurrency flags: the app's configured pool runs IDVCANCEL_WORKER_PROCESSES full worker
processes with IDVCANCEL_WORKER_THREADS threads each, ``/metrics`` on the first counts
the work of all of them, a process that dies is started again, and SIGTERM to the first
stops them all with every request in flight ending once.

Real parts: a Redis server, the simulator over HTTP, real worker processes started the
way an operator starts them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import TEST_ENV
from tests.integration.harness import read_stream, wait_for
from worker.broker.producer import Producer
from worker.local.procs import WorkerProcess
from worker.local.simulator.client import SimulatorClient
from worker.local.simulator.server import Simulator

PROCESSES = 2
THREADS = 4
_READY = re.compile(r"@\S+ ready\.")


@dataclass
class PlainWorker:
    """A worker started with the plain command, and what a test reads from it."""

    proc: WorkerProcess
    metrics_dir: Path
    port: int
    env: dict[str, str]

    def ready_lines(self) -> int:
        return len(_READY.findall(self.proc.log_text()))

    def siblings(self) -> list[int]:
        """Process ids of the first process's children that are worker processes."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "celery"],
                             capture_output=True, text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def scraped_requests(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == "idvcancel_requests_total")

    def requests_by_process(self) -> dict[int, float]:
        """``idvcancel_requests_total`` as each process counted it (its own file)."""
        counted: dict[int, float] = {}
        for path in self.metrics_dir.glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            counted[pid] = sum(
                sample.value for family in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]  # untyped upstream
                for sample in family.samples if sample.name == "idvcancel_requests_total")
        return counted


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator(autocreate=True).start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def sim_client(sim: Simulator) -> Iterator[SimulatorClient]:
    client = SimulatorClient(sim.url)
    client.reset()
    client.configure(autocreate=True)
    try:
        yield client
    finally:
        client.close()


def start_plain(env: dict[str, str], log_path: Path, *args: str,
                nodes: int = PROCESSES) -> WorkerProcess:
    proc = WorkerProcess(env, plain=True, log_path=log_path, extra_args=args).start()
    wait_for(lambda: len(_READY.findall(proc.log_text())) >= nodes or not proc.is_running(),
             timeout=90, interval=0.2, message="worker processes ready")
    assert proc.is_running(), proc.log_tail()
    return proc


def worker_env(redis_url: str, sim: Simulator, metrics_dir: Path, port: int
               ) -> dict[str, str]:
    metrics_dir.mkdir()
    return {**TEST_ENV, **sim.env(), "IDVCANCEL_REDIS_URL": redis_url,
            "IDVCANCEL_RATE_LIMITS": "{}", "IDVCANCEL_METRICS_PORT": str(port),
            "IDVCANCEL_WORKER_PROCESSES": str(PROCESSES),
            "IDVCANCEL_WORKER_THREADS": str(THREADS), "IDVCANCEL_WORKER_PREFETCH": "1",
            # A directory of the test's, so that it can read each process's own counts.
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}


@pytest.fixture
def worker(redis_url: str, sim: Simulator, sim_client: SimulatorClient,
           tmp_path: Path) -> Iterator[PlainWorker]:
    port = free_port()
    env = worker_env(redis_url, sim, tmp_path / "metrics", port)
    proc = start_plain(env, tmp_path / "worker.log")
    try:
        yield PlainWorker(proc, tmp_path / "metrics", port, env)
    finally:
        proc.stop(timeout=30)


def requests(n: int) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    return [{"request_id": f"plain-{run}-{i}", "provider": "idpass", "action": "cancel",
             "reference": str(uuid.uuid4()), "requested_by": "tests"} for i in range(n)]


def submit(redis_url: str, batch: list[dict[str, Any]]) -> None:
    producer = Producer(redis_url)
    try:
        producer.submit_many(batch)
    finally:
        producer.close()


def result_counts(redis_url: str) -> dict[str, int]:
    """How many result events each request id has."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        counts: dict[str, int] = {}
        for event in read_stream(client, "idvcancel:results", "event"):
            counts[event["request_id"]] = counts.get(event["request_id"], 0) + 1
        return counts
    finally:
        client.close()


def pool_stats(redis_url: str) -> dict[str, Any]:
    """``celery inspect stats``, as an operator would ask it, node -> pool info."""
    app = celery.Celery(broker=redis_url)
    try:
        stats = app.control.inspect(timeout=5).stats() or {}
        return {node: info["pool"] for node, info in stats.items()}
    finally:
        app.close()


def test_the_plain_command_runs_processes_with_threads_and_metrics_count_them_all(
        worker: PlainWorker, sim_client: SimulatorClient, redis_url: str) -> None:
    """Given ``celery -A worker.app worker`` with IDVCANCEL_WORKER_PROCESSES=2 and 4 threads
    When 40 requests are sent to a provider answering in 200 ms
    Then two worker nodes run the configured pool, each with 4 threads; every request
    ends once; and /metrics counts all 40, work both processes did."""
    # Given
    siblings = worker.siblings()
    assert len(siblings) == PROCESSES - 1, worker.proc.log_tail()
    sim_client.set_faults("idpass", latency_ms=200)
    batch = requests(40)
    # When
    submit(redis_url, batch)
    wait_for(lambda: len(result_counts(redis_url)) >= len(batch), timeout=60,
             message="40 results")
    # Then
    time.sleep(0.5)  # a second event, if any, would arrive now
    assert result_counts(redis_url) == {r["request_id"]: 1 for r in batch}
    pools = pool_stats(redis_url)
    assert len(pools) == PROCESSES, pools
    for node, pool in pools.items():
        assert pool["implementation"] == "worker.runner.threaded_processes:ThreadedProcesses", node
        assert pool["max-concurrency"] == THREADS, node
        assert pool["threads"] == THREADS, (node, pool)
    by_process = worker.requests_by_process()
    assert set(by_process) == {worker.proc.pid, *siblings}, by_process
    assert all(count > 0 for count in by_process.values()), by_process
    assert sum(by_process.values()) == len(batch)
    assert worker.scraped_requests() == len(batch)


def test_a_worker_process_that_dies_is_started_again(
        worker: PlainWorker, redis_url: str) -> None:
    """Given the plain worker's two processes
    When the second is killed with SIGKILL
    Then the first starts a new one, which becomes ready and takes work."""
    # Given
    (sibling,) = worker.siblings()
    # When
    os.kill(sibling, signal.SIGKILL)
    # Then
    wait_for(lambda: [p for p in worker.siblings() if p != sibling], timeout=30,
             message="a new second process")
    wait_for(lambda: worker.ready_lines() >= PROCESSES + 1, timeout=60,
             message="the new process ready")
    assert "worker process died" in worker.proc.log_text()
    batch = requests(20)
    submit(redis_url, batch)
    wait_for(lambda: len(result_counts(redis_url)) >= len(batch), timeout=60,
             message="20 results")
    (new_sibling,) = worker.siblings()
    assert worker.requests_by_process().get(new_sibling, 0) > 0


def test_term_on_the_first_process_stops_all_and_loses_nothing(
        worker: PlainWorker, sim_client: SimulatorClient, redis_url: str,
        tmp_path: Path) -> None:
    """Given the plain worker busy with calls that take a second, in both processes
    When its first process gets SIGTERM (what docker stop or systemd sends)
    Then every process exits, cleanly; and once a new worker has drained the queue,
    every request has ended exactly once, with one call to the provider each."""
    # Given
    sim_client.set_faults("idpass", latency_ms=1000)
    batch = requests(30)
    submit(redis_url, batch)
    wait_for(lambda: len(sim_client.calls("idpass")) >= PROCESSES * THREADS, timeout=30,
             message="a first round of calls done, the next in flight")
    processes = [worker.proc.pid, *worker.siblings()]
    # When
    os.kill(worker.proc.pid, signal.SIGTERM)
    # Then
    wait_for(lambda: not worker.proc.is_running(), timeout=60, message="the first exits")
    assert worker.proc.returncode == 0, worker.proc.log_tail()
    wait_for(lambda: not any(_alive(pid) for pid in processes), timeout=10,
             message="every worker process exits")
    in_flight = {call["reference"] for call in sim_client.calls("idpass")}
    done = {r["request_id"] for r in batch if r["reference"] in in_flight}
    assert done <= set(result_counts(redis_url)), "a call in flight did not end"
    sim_client.set_faults("idpass", latency_ms=0)
    again = start_plain(worker.env, tmp_path / "worker-again.log")
    try:
        wait_for(lambda: len(result_counts(redis_url)) >= len(batch), timeout=60,
                 message="all results")
        time.sleep(0.5)
    finally:
        again.stop(timeout=30)
    assert result_counts(redis_url) == {r["request_id"]: 1 for r in batch}
    for req in batch:
        assert len(sim_client.calls("idpass", req["reference"], effective=True)) == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here (its parent reaps it on exit).
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(
        f"/proc/{pid}/stat").exists() else "X"
    return status not in {"Z", "X"}


def test_prefork_children_are_counted_by_the_parent_s_metrics(
        redis_url: str, sim: Simulator, sim_client: SimulatorClient, tmp_path: Path) -> None:
    """Given Celery's prefork pool asked for on the command line (-P processes -c 2)
    When 20 requests are done
    Then /metrics, served by the parent, counts all 20: the work its children did."""
    # Given
    port = free_port()
    env = worker_env(redis_url, sim, tmp_path / "metrics", port)
    proc = start_plain(env, tmp_path / "prefork.log", "-P", "processes", "-c", "2", nodes=1)
    prefork = PlainWorker(proc, tmp_path / "metrics", port, env)
    try:
        # When
        batch = requests(20)
        submit(redis_url, batch)
        wait_for(lambda: len(result_counts(redis_url)) >= len(batch), timeout=60,
                 message="20 results")
        # Then
        assert prefork.scraped_requests() == len(batch)
        by_process = prefork.requests_by_process()
        assert proc.pid not in by_process or by_process[proc.pid] == 0, by_process
        assert sum(by_process.values()) == len(batch)
    finally:
        proc.stop(timeout=30)
