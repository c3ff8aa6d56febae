"""Broker restart: the Redis under the queue, the ledger and the streams goes away in the
middle of a run and comes back (append-only file on, fsynced before every answer). The
worker must reconnect by itself and every request must end exactly once.

The clean restart (SIGTERM, AOF flushed) must not even replace the worker. The crash
(SIGKILL, 5 s down) is repeated ten times on one stack, and what kombu's Redis transport
does to it is taken as a deployment would take it:

* the worker may exit instead of reconnecting (kombu's restore over a dead connection):
  a supervisor starts another, here the test does, and counts it;
* a message popped by BRPOP just before Redis died is in neither the queue nor the
  un-acked hash: the reconciler (a real beat enqueuing ``idvcancel.reconcile``) pushes it
  again after its age. The test never resubmits anything itself.

What must hold in every run: no request lost, none doubled, each session cancelled
once at the provider, the audit chain intact.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.reliability.conftest import RECONCILE_AGE, RelStack, wait_until
from worker.local.procs import WorkerProcess

REQUESTS = 200
RUNS = 10
DOWN_SECONDS = 5.0


@dataclass
class Run:
    """What one fault did, as docs/reliability.md quotes it."""

    label: str
    requests: int
    done_before: int
    lost: int
    doubled: int
    resubmitted: dict[str, int]
    needless: int
    worker_restarts: int
    beat_restarts: int
    reconnects: int
    seconds: float

    def line(self) -> str:
        return (f"{self.label}: {self.requests} requests, {self.done_before} done before the "
                f"fault, all done {self.seconds:.1f} s after it; lost {self.lost}, doubled "
                f"{self.doubled}, resubmitted by the reconciler "
                f"{sum(self.resubmitted.values())} {self.resubmitted} (original came too: "
                f"{self.needless}); worker restarted {self.worker_restarts}, beat restarted "
                f"{self.beat_restarts}, broker reconnects logged {self.reconnects}")


class Supervisor:
    """Starts a worker (or beat) again when it exits, as systemd or Kubernetes would."""

    def __init__(self, rel: RelStack, worker: WorkerProcess) -> None:
        self.rel = rel
        self.worker = worker
        self.worker_restarts = 0
        self.beat_restarts = 0

    def tend(self) -> None:
        if not self.worker.is_running():
            self.worker_restarts += 1
            self.worker = self.rel.start_worker(concurrency=16)
        for beat in self.rel.beats:
            if not beat.is_running():
                self.beat_restarts += 1
                beat.start().wait_ready()


def _run(rel: RelStack, supervisor: Supervisor, fault: Callable[[], object], label: str,
         prefix: str) -> Run:
    requests = rel.seeded_requests(REQUESTS, prefix=prefix)
    ids = [r["request_id"] for r in requests]
    rel.producer.submit_many(requests)
    wait_until(lambda: rel.phases(ids)["done"] >= 40 and rel.phases(ids)["calling"] >= 4, 60,
               "40 results and calls in flight")
    done_before = rel.phases(ids)["done"]
    reconnects_before = rel.worker_logs().count("Connection to broker lost")
    restarts_before = supervisor.worker_restarts, supervisor.beat_restarts
    started = time.monotonic()
    # When the broker goes away mid-run and comes back
    fault()
    # Then every request ends, the supervisor starting again whatever exited

    def all_done() -> bool:
        supervisor.tend()
        return rel.phases(ids)["done"] == len(ids)

    wait_until(all_done, RECONCILE_AGE + 60, f"{label}: every request done", interval=0.5)
    results = rel.wait_results(ids, timeout=10)  # exactly one result each
    seconds = time.monotonic() - started
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    for request in requests:
        assert len(rel.sim_client.calls("idpass", request["reference"], effective=True)) == 1
    resubmitted = rel.resubmissions(ids)
    needless = {r["request_id"] for r in resubmitted
                if "duplicate" in [a["step"] for a in rel.audit(r["request_id"])]}
    return Run(label, len(ids), done_before, 0, 0,
               dict(Counter(r["phase"] or "none" for r in resubmitted)), len(needless),
               supervisor.worker_restarts - restarts_before[0],
               supervisor.beat_restarts - restarts_before[1],
               rel.worker_logs().count("Connection to broker lost") - reconnects_before,
               seconds)


@pytest.mark.slow
def test_redis_restart_mid_run_the_same_worker_reconnects_and_loses_nothing(
        rel: RelStack) -> None:
    # Given one worker taking 200 cancels at 200 ms each
    worker = rel.start_worker(concurrency=16)
    rel.sim_client.set_faults("idpass", latency_ms=200)
    supervisor = Supervisor(rel, worker)
    # When Redis is restarted cleanly (SIGTERM: it flushes its AOF) on the same port
    run = _run(rel, supervisor, rel.server.restart, "redis restart", "r")
    print(f"\n{run.line()}")
    # Then the same worker reconnected by itself and nothing needed pushing again
    assert supervisor.worker is worker and worker.is_running()
    assert run.resubmitted == {}
    assert rel.effective_duplicates() == []
    rel.assert_chain_intact()


@pytest.mark.slow
def test_redis_kill_9_and_5_s_down_mid_run_ten_times_loses_and_doubles_nothing(
        rel: RelStack) -> None:
    # Given beat running the reconciler and one worker, ID Pass answering in 100 ms
    rel.start_beat()
    supervisor = Supervisor(rel, rel.start_worker(concurrency=16))
    rel.sim_client.set_faults("idpass", latency_ms=100)

    def crash_and_come_back() -> None:
        # SIGKILL: nothing flushed beyond what the AOF already holds; down for 5 s
        # (longer than the ledger client's own retries ride out)
        rel.server.kill()
        time.sleep(DOWN_SECONDS)  # the outage itself, not an assertion
        rel.server.start()

    runs = []
    for n in range(RUNS):
        # When Redis is killed -9 mid-run and started again after 5 s, ten times over
        runs.append(_run(rel, supervisor, crash_and_come_back,
                         f"redis kill -9 #{n + 1}", f"c{n}"))
        print(f"\n{runs[-1].line()}")
    # Then across all runs nothing was lost or doubled, no session cancelled twice
    assert rel.effective_duplicates() == []
    rel.assert_chain_intact()
    assert rel.redis.zcard("idvcancel:intake") == 0, "the intake index holds finished requests"
    total = Counter[str]()
    for run in runs:
        total.update(run.resubmitted)
    print(f"\nredis kill -9, {RUNS} runs: {RUNS * REQUESTS} requests, lost 0, doubled 0, "
          f"resubmitted {sum(total.values())} {dict(total)} (original came too: "
          f"{sum(r.needless for r in runs)}), worker restarted in "
          f"{sum(r.worker_restarts > 0 for r in runs)} runs, beat in "
          f"{sum(r.beat_restarts > 0 for r in runs)}, done "
          f"{min(r.seconds for r in runs):.1f}-{max(r.seconds for r in runs):.1f} s after "
          "the crash")
