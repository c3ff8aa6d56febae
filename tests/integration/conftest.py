"""The integration stack: a real Redis server, the simulator over HTTP and real Celery
worker processes, all started by the project's own code on loopback.

One stack per test session (starting workers takes seconds); each test gets it clean:
the ``idvcancel:*`` keys deleted and the simulator reset. The stack has its own Redis,
so unit tests that FLUSHALL the shared one never pull the floor from under a worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from worker.broker.producer import Producer
from worker.journal.verify import verify_stream
from worker.local.procs import WorkerProcess
from worker.local.redis_server import RedisServer
from worker.local.simulator.client import SimulatorClient
from worker.local.simulator.server import Simulator

#: Fast retries so that budgets run out in about a second; HTTP timeout short enough
#: for the countdown/visibility check (cap + timeout well below the visibility timeout).
TEST_ENV = {
    "IDVCANCEL_RETRY_BASE_SECONDS": "0.05",
    "IDVCANCEL_RETRY_CAP_SECONDS": "0.3",
    "IDVCANCEL_RETRY_MAX_ATTEMPTS": "4",
    "IDVCANCEL_HTTP_TIMEOUT_SECONDS": "2",
    "IDVCANCEL_LEASE_SECONDS": "5",
    "IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS": "10",
    "IDVCANCEL_JUMIO_USER_AGENT": "idv-cancel-tests/1.0",
    # Confirmation reads due a second after a request ends (drained only where a test
    # runs beat: tests/integration/test_confirm_e2e.py).
    "IDVCANCEL_CONFIRM_AFTER_SECONDS": "1",
}


class Stack:
    """Everything a test talks to, and the assertions they share."""

    def __init__(self, redis_url: str, sim: Simulator, log_dir: Path,
                 broker_url: str | None = None) -> None:
        self.redis_url = redis_url
        #: Where the queue lives: the same Redis, or a RabbitMQ node (``amqp://``).
        self.broker_url = broker_url or redis_url
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.sim = sim
        self.sim_client = SimulatorClient(sim.url)
        self.env = {**TEST_ENV, **sim.env(), "IDVCANCEL_REDIS_URL": redis_url,
                    **({"IDVCANCEL_BROKER_URL": broker_url} if broker_url else {})}
        self.producer = Producer(redis_url, broker_url=broker_url)
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start_worker(self, concurrency: int = 16, **overrides: str) -> WorkerProcess:
        proc = WorkerProcess({**self.env, **overrides}, concurrency=concurrency,
                             log_path=self.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log")
        proc.start()
        proc.wait_ready(timeout=60)
        self.workers.append(proc)
        return proc

    def request(self, provider: str = "idpass", action: str = "cancel", **fields: Any
                ) -> dict[str, Any]:
        reference = fields.pop("reference", None) or new_reference(provider)
        return {"request_id": f"t-{uuid.uuid4().hex[:12]}", "provider": provider,
                "action": action, "reference": reference, "requested_by": "tests", **fields}

    def entries(self, stream: str) -> list[tuple[str, dict[str, str]]]:
        """Every entry of ``stream`` (the client decodes responses: all text)."""
        return cast("list[tuple[str, dict[str, str]]]", self.redis.xrange(stream))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(f["event"]) for _, f in self.entries("idvcancel:results")]

    def audit(self, request_id: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(f["record"]) for _, f in self.entries("idvcancel:audit")]
        return [r for r in records if request_id is None or r["request_id"] == request_id]

    def results(self, request_ids: list[str], timeout: float = 30, settle: float = 0.5
                ) -> dict[str, dict[str, Any]]:
        """Wait for every id's result; assert each has exactly one event."""
        deadline = time.monotonic() + timeout
        wanted = set(request_ids)
        while True:
            seen = {e["request_id"] for e in self.events()}
            if wanted <= seen:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {sorted(wanted - seen)} after {timeout} s")
            time.sleep(0.05)
        time.sleep(settle)  # a second event, if any, would arrive now
        by_id: dict[str, list[dict[str, Any]]] = {}
        for event in self.events():
            by_id.setdefault(event["request_id"], []).append(event)
        for rid in request_ids:
            assert len(by_id[rid]) == 1, f"{rid} has {len(by_id[rid])} result events"
        return {rid: by_id[rid][0] for rid in request_ids}

    def wait_events(self, predicate: Callable[[dict[str, Any]], bool], count: int = 1,
                    timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until ``count`` events match ``predicate``; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if predicate(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} events after {timeout} s")
            time.sleep(0.05)

    def result(self, request_id: str, timeout: float = 30, settle: float = 0.5
               ) -> dict[str, Any]:
        return self.results([request_id], timeout, settle)[request_id]

    def provider_calls(self, provider: str, reference: str) -> list[dict[str, Any]]:
        return self.sim_client.calls(provider, reference)

    def assert_chain_intact(self) -> int:
        count, broken = verify_stream(self.redis)
        assert broken is None, broken.describe()
        return count


def new_reference(provider: str) -> str:
    return str(uuid.uuid4()) if provider == "idpass" else f"ref{uuid.uuid4().hex[:20]}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``BOTH_BROKERS = True`` runs each of its stack tests twice:
    on the Redis broker and on a private RabbitMQ node (the state store is Redis in
    both): whatever produces must work unchanged on either."""
    if "stack_base" in metafunc.fixturenames:
        kinds = ["redis", "rabbitmq"] if getattr(metafunc.module, "BOTH_BROKERS", False) else [
            "redis"]
        metafunc.parametrize("broker_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "redis"))


@pytest.fixture(scope="session")
def stack_base(tmp_path_factory: pytest.TempPathFactory, broker_kind: str,
               request: pytest.FixtureRequest) -> Iterator[Stack]:
    broker_url = None
    if broker_kind == "rabbitmq":
        broker_url = request.getfixturevalue("rabbit_node").add_vhost("stack")
    server = RedisServer(data_dir=tmp_path_factory.mktemp("stack-redis"), appendonly=True)
    server.start()
    sim = Simulator().start()
    stack = Stack(server.url, sim, tmp_path_factory.mktemp("logs"), broker_url=broker_url)
    try:
        stack.start_worker()
        yield stack
    finally:
        for proc in stack.workers:
            proc.stop()
        stack.producer.close()
        sim.stop()
        server.cleanup()


@pytest.fixture
def stack(stack_base: Stack) -> Iterator[Stack]:
    keys = list(stack_base.redis.scan_iter("idvcancel:*", count=1000))
    if keys:
        stack_base.redis.delete(*keys)
    stack_base.sim_client.reset()
    default = stack_base.workers[:1]
    yield stack_base
    for proc in stack_base.workers[1:]:  # workers a test started for itself
        proc.stop()
    stack_base.workers = default
    if default and not default[0].is_running():
        # A test killed the shared worker (crash tests): bring a fresh one back.
        stack_base.workers = []
        stack_base.start_worker()


def seed(stack: Stack, provider: str, reference: str, status: str,
         **extra: Mapping[str, Any] | str) -> None:
    stack.sim_client.seed(provider, [{"reference": reference, "status": status, **extra}])
