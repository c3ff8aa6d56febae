"""The reliability stack: a private Redis (append-only, fsynced before every answer,
restartable), a private simulator, real worker processes and, for the tests that need
the reconciler, a real ``celery beat``, fresh for every test.

Each test gets its own everything because each fault needs its own worker settings
(budgets, breaker, rate limits) and because the faults themselves (``kill -9``, a Redis
restart, an outage) must not leak into the next test. Worker logs are kept under the
test's ``tmp_path`` and their tails are printed when a test fails.

Every timing below is a deadline for polling, never a fixed sleep that an assertion
relies on: the suite shares two cores with other engineers' test runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis

from tests.integration.conftest import Stack
from tests.integration.harness import close_producers
from worker.local.procs import REPO_ROOT, WorkerProcess
from worker.local.redis_server import RedisServer
from worker.local.simulator.server import Simulator

RELIABILITY_DIR = Path(__file__).resolve().parent

#: Short enough that a crash recovers within a test; the settings validator requires
#: visibility >= 2 * (retry cap + HTTP timeout) = 2 * (0.3 + 2) = 4.6 s. The lease is
#: shorter than the visibility timeout, so a redelivered message finds it expired.
#: No rate limit by default (TXCloud's default 1/s would make the multi-provider tests
#: crawl); the rate-limit tests set their own. Beat, where a test starts one, enqueues
#: ``idvcancel.reconcile`` every 2 s; the reconciler's age is its default, 3 x the
#: visibility timeout = 18 s.
RELIABILITY_ENV = {
    "IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS": "6",
    "IDVCANCEL_RETRY_CAP_SECONDS": "0.3",
    "IDVCANCEL_HTTP_TIMEOUT_SECONDS": "2",
    "IDVCANCEL_LEASE_SECONDS": "3",
    "IDVCANCEL_RATE_LIMITS": "{}",
    "IDVCANCEL_RECONCILE_INTERVAL_SECONDS": "2",
}
#: The reconciler's age in this suite (IDVCANCEL_RECONCILE_AFTER_SECONDS unset).
RECONCILE_AGE = 3 * float(RELIABILITY_ENV["IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"])

#: How long a test waits for a worker to say "ready" (two busy cores: be generous).
WORKER_READY_TIMEOUT = 90.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under ``tests/reliability/`` is an integration test."""
    for item in items:
        if Path(item.path).resolve().is_relative_to(RELIABILITY_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float, message: str,
               interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it. Redis errors
    while polling (a restart in progress) count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.ConnectionError, redis.TimeoutError, httpx.TransportError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {message}")
        time.sleep(interval)


class BeatProcess:
    """``celery -A worker.app beat`` as a subprocess in its own session, its schedule file
    and log under the test's directory: the periodic tasks (here: the reconciler) come
    from a real beat, as in production."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_path = log_dir / f"beat-{uuid.uuid4().hex[:6]}.log"
        self.schedule = log_dir / f"beat-schedule-{uuid.uuid4().hex[:6]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self.starts = 0

    def start(self) -> BeatProcess:
        with open(self.log_path, "ab") as out:
            self._offset = out.tell()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-l", "INFO",
                 "-s", str(self.schedule)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True)
        self.starts += 1
        return self

    def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT) -> BeatProcess:
        wait_until(lambda: "beat: Starting" in self.log_text()[self._offset:]
                   or not self.is_running(), timeout, "celery beat starting")
        if not self.is_running():
            raise AssertionError(f"celery beat exited:\n{self.log_text()[-3000:]}")
        return self

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # beat mid-send can ignore SIGTERM a while
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


class RelStack(Stack):
    """``tests.integration.conftest.Stack`` on a private, restartable Redis, plus what the
    reliability tests share: grouped results, ledger phases, stream paging."""

    def __init__(self, server: RedisServer, sim: Simulator, log_dir: Path,
                 broker_url: str | None = None) -> None:
        super().__init__(server.url, sim, log_dir, broker_url=broker_url)
        self.server = server
        self.env.update(RELIABILITY_ENV)
        self.beats: list[BeatProcess] = []

    # -- beat --------------------------------------------------------------------------
    def start_beat(self, **overrides: str) -> BeatProcess:
        """Start celery beat (the reconciler every 2 s) and wait until it runs."""
        beat = BeatProcess({**self.env, **overrides}, self.log_dir)
        self.beats.append(beat)
        return beat.start().wait_ready()

    # -- workers -----------------------------------------------------------------------
    def launch_worker(self, concurrency: int = 16, **overrides: str) -> WorkerProcess:
        """Start a worker without waiting for it (start several, then wait for all)."""
        proc = WorkerProcess({**self.env, **overrides}, concurrency=concurrency,
                             log_path=self.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log")
        proc.start()
        self.workers.append(proc)
        return proc

    def start_worker(self, concurrency: int = 16, **overrides: str) -> WorkerProcess:
        return self.launch_worker(concurrency, **overrides).wait_ready(WORKER_READY_TIMEOUT)

    def start_workers(self, count: int, concurrency: int = 16,
                      **overrides: str) -> list[WorkerProcess]:
        procs = [self.launch_worker(concurrency, **overrides) for _ in range(count)]
        for proc in procs:
            proc.wait_ready(WORKER_READY_TIMEOUT)
        return procs

    def worker_logs(self) -> str:
        return "\n".join(proc.log_text() for proc in self.workers)

    # -- streams -----------------------------------------------------------------------
    def stream(self, key: str, field: str) -> list[tuple[str, dict[str, Any]]]:
        """Every entry of a stream, paged, as (entry id, decoded JSON field)."""
        out: list[tuple[str, dict[str, Any]]] = []
        low = "-"
        while True:
            page = cast("list[tuple[str, dict[str, str]]]",
                        self.redis.xrange(key, min=low, max="+", count=1000))
            out.extend((eid, json.loads(fields[field])) for eid, fields in page
                       if field in fields)
            if len(page) < 1000:
                return out
            low = "(" + page[-1][0]

    def events(self) -> list[dict[str, Any]]:
        return [event for _, event in self.stream("idvcancel:results", "event")]

    def audit(self, request_id: str | None = None) -> list[dict[str, Any]]:
        return [r for _, r in self.stream("idvcancel:audit", "record")
                if request_id is None or r["request_id"] == request_id]

    def grouped(self) -> dict[str | None, list[dict[str, Any]]]:
        by_id: dict[str | None, list[dict[str, Any]]] = {}
        for event in self.events():
            by_id.setdefault(event["request_id"], []).append(event)
        return by_id

    def wait_results(self, request_ids: Collection[str], timeout: float,
                     settle: float = 1.0) -> dict[str, dict[str, Any]]:
        """Wait until every id has a result event, let late duplicates show up for
        ``settle`` seconds, then assert each id has exactly one; return them."""
        wanted = set(request_ids)

        def missing() -> set[str]:
            return wanted - {e["request_id"] for e in self.events()}

        try:
            wait_until(lambda: not missing(), timeout, "every request has a result")
        except AssertionError:
            left = sorted(missing())
            phases = Counter(self.ledger(rid).get("phase", "(none)") for rid in left)
            raise AssertionError(
                f"{len(left)} of {len(wanted)} requests have no result after {timeout:.0f} s;"
                f" their ledger phases: {dict(phases)}; first: {left[:5]}") from None
        time.sleep(settle)  # not an assertion: gives a second event time to appear
        grouped = self.grouped()
        doubled = {rid: len(grouped[rid]) for rid in wanted if len(grouped[rid]) != 1}
        assert not doubled, f"requests with more than one result event: {doubled}"
        return {rid: grouped[rid][0] for rid in wanted}

    # -- ledger ------------------------------------------------------------------------
    def ledger(self, request_id: str) -> dict[str, str]:
        return cast("dict[str, str]", self.redis.hgetall(f"idvcancel:req:{request_id}"))

    def phases(self, request_ids: Collection[str]) -> Counter[str]:
        pipe = self.redis.pipeline(transaction=False)
        for rid in request_ids:
            pipe.hget(f"idvcancel:req:{rid}", "phase")
        return Counter(phase or "(none)" for phase in pipe.execute())

    # -- requests ----------------------------------------------------------------------
    def seeded_requests(self, count: int, provider: str = "idpass", status: str = "new",
                        prefix: str = "r", **fields: Any) -> list[dict[str, Any]]:
        """``count`` requests, each for its own session seeded in ``status``."""
        requests = []
        for i in range(count):
            request = self.request(provider, **fields)
            request["request_id"] = f"{prefix}-{i:04d}-{uuid.uuid4().hex[:8]}"
            requests.append(request)
        self.sim_client.seed(provider, [{"reference": r["reference"], "status": status}
                                        for r in requests])
        return requests

    def parked(self) -> set[str]:
        """Request ids of the messages waiting in the broker: in the queue, or delivered
        but un-acked (kombu's ``unacked`` hash, restored after the visibility timeout)."""
        envelopes = [json.loads(raw)[0] for raw in cast(
            "dict[str, str]", self.redis.hgetall("unacked")).values()]
        envelopes += [json.loads(raw) for raw in cast(
            "list[str]", self.redis.lrange("idvcancel", 0, -1))]
        found: set[str] = set()
        for envelope in envelopes:
            body = envelope.get("body", "")
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
                found.add(str(json.loads(body)[0][0]["request_id"]))
        return found

    def effective_duplicates(self) -> list[dict[str, Any]]:
        dupes: list[dict[str, Any]] = self.sim_client.stats()["duplicate_effective"]
        return dupes

    def resubmissions(self, request_ids: Collection[str]) -> list[dict[str, Any]]:
        """The reconciler's ``resubmitted`` audit records of these requests."""
        wanted = set(request_ids)
        return [r for r in self.audit() if r["step"] == "resubmitted"
                and r["request_id"] in wanted]


@pytest.fixture
def sim_credentials() -> dict[str, Any] | None:
    """The credentials the simulator accepts (None: its defaults). A test module
    overrides this fixture to plant its own."""
    return None


def open_stack(tmp_path: Path, sim_credentials: dict[str, Any] | None = None,
               broker_url: str | None = None) -> RelStack:
    """A private Redis (append-only), simulator and stack under ``tmp_path``; no worker.
    ``broker_url``: the queue elsewhere (a RabbitMQ vhost), Redis then the state only."""
    # fsync before every answer: a kill -9 must not take back a write Redis acknowledged
    # (with everysec a postponed write can be lost; see worker.local.redis_server.RedisServer).
    server = RedisServer(appendonly=True, appendfsync="always", data_dir=tmp_path / "redis")
    server.start()
    sim = Simulator(credentials=sim_credentials).start()
    stack = RelStack(server, sim, tmp_path / "logs", broker_url=broker_url)
    stack.log_dir.mkdir()
    return stack


def close_stack(stack: RelStack, *, show_logs: bool = False) -> None:
    """Stop everything ``open_stack`` started (and the stack's workers); with
    ``show_logs``, print each worker's log tail first (a test failed)."""
    if show_logs:
        for proc in stack.workers:
            print(f"\n----- {proc!r} (exit {proc.returncode}) -----\n{proc.log_tail(3000)}")
        for beat in stack.beats:
            print(f"\n----- beat {beat.log_path} -----\n{beat.log_text()[-2000:]}")
    for beat in stack.beats:
        with contextlib.suppress(Exception):
            beat.stop()
    for proc in stack.workers:
        with contextlib.suppress(Exception):
            proc.stop(timeout=10)
    with contextlib.suppress(Exception):
        stack.producer.close()
    close_producers()
    stack.sim_client.close()
    stack.redis.close()
    stack.sim.stop()
    stack.server.cleanup()


@pytest.fixture
def rel(request: pytest.FixtureRequest, tmp_path: Path,
        sim_credentials: dict[str, Any] | None) -> Iterator[RelStack]:
    """A private stack for one test (no worker started: tests start their own)."""
    stack = open_stack(tmp_path, sim_credentials)
    try:
        yield stack
    finally:
        close_stack(stack, show_logs=run_failed(request))


def run_failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test using this fixture failed (its setup or its body)."""
    return any(getattr(request.node, f"rep_{when}", None) is not None
               and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
