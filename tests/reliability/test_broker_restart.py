"""Broker restart: the Redis under the queue, the ledger and the streams goes away in the
middle of a run and comes back (append-only file on). The worker must reconnect by
itself (same process, nobody restarts it) and every request must end exactly once.

The clean restart (SIGTERM, AOF flushed) passes as it should. The crash (SIGKILL, 5 s
down) exposes three weaknesses of kombu's Redis transport that the test tells apart
and reports as ``xfail`` with the evidence, after checking what must hold anyway (no
request doubled, no session cancelled twice, the audit chain intact):

* the worker may exit instead of reconnecting (a supervisor restarts it here);
* its prefetched messages may stay parked un-acked for ~100 s;
* rarely, one message is lost outright: popped by BRPOP, never delivered. Resubmitting
  the requests that have no result (safe: the ledger) completes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest

from tests.reliability.conftest import RELIABILITY_ENV, RelStack, wait_until

REQUESTS = 200
VISIBILITY = float(RELIABILITY_ENV["IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"])
WORKER_DIED = (
    "worker died: when Redis dies while the consumer restores its un-acked messages, the "
    "worker exits ('Unrecoverable error: AttributeError: NoneType object has no attribute "
    "hostname', kombu/transport/redis.py _connparams) instead of reconnecting; a "
    "supervisor-style restart finished the run")
STALLED = (
    "stalled: the messages this worker had prefetched stayed in kombu's 'unacked' hash "
    "(its restore-on-disconnect ran while Redis was down) until kombu's periodic sweep, "
    "every unacked_restore_interval (10 s) x unacked_restore_throttle (10) = ~100 s, which "
    "config/celery.py does not shorten; checked parked in the broker, not lost")
LOST = (
    "LOST: a message popped by kombu's BRPOP just before Redis died never reached the "
    "worker and is in neither the queue nor the un-acked hash (kombu's Redis transport "
    "is at-most-once in that window); resubmitting the requests without a result "
    "completed them exactly once")


def _run_through(rel: RelStack, fault: Callable[[], None], label: str) -> None:
    worker = rel.start_worker(concurrency=16)
    requests = rel.seeded_requests(REQUESTS)
    by_id = {r["request_id"]: r for r in requests}
    rel.sim_client.set_faults("idpass", latency_ms=200)
    rel.producer.submit_many(requests)
    wait_until(lambda: len(rel.events()) >= 40 and rel.phases(by_id)["calling"] >= 4, 60,
               "40 results and calls in flight")
    pid = worker.pid
    done_before = len(rel.events())
    started = time.monotonic()
    # When the broker goes away mid-run and comes back
    fault()

    def missing() -> set[str]:
        return set(by_id) - {e["request_id"] for e in rel.events()}

    # Then the worker finishes every request. Should it die instead of reconnecting, a
    # supervisor (systemd, Kubernetes) would start another: do the same.
    problems: list[str] = []
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not worker.is_running() or not missing(), 30,
                   "all results, or the worker died")
    if not worker.is_running():
        problems.append(WORKER_DIED)
        time.sleep(VISIBILITY + 1)  # the supervisor's restart delay: part of the scenario
        rel.start_worker(concurrency=16)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not missing(), 25, "all results after the restart")
    stuck = missing()
    parked = stuck & rel.parked()
    lost = stuck - parked
    # What must hold whatever happened: nothing doubled, nothing cancelled twice
    doubled = {k: len(v) for k, v in rel.grouped().items() if len(v) > 1}
    assert not doubled, f"requests with more than one result: {doubled}"
    assert rel.effective_duplicates() == []
    assert {e["outcome"] for e in rel.events()} == {"cancelled"}
    rel.assert_chain_intact()
    if parked:
        problems.append(f"{STALLED} ({len(parked)} requests)")
    if lost:
        assert all(not rel.ledger(rid) for rid in lost), "lost mid-way, not in transit"
        rel.producer.submit_many([by_id[rid] for rid in sorted(lost)])
        rel.wait_results(sorted(lost), timeout=20)
        problems.insert(0, f"{LOST} ({len(lost)} of {REQUESTS}: {sorted(lost)})")
    took = time.monotonic() - started
    reconnects = worker.log_text().count("Connection to broker lost")
    print(f"\n{label}: {REQUESTS} requests, {done_before} done before the fault, "
          f"{REQUESTS - len(stuck)} done {took:.1f} s after it, broker reconnects logged "
          f"{reconnects}; worker died: {not worker.is_running()}, parked {len(parked)}, "
          f"lost {len(lost)}, doubled 0")
    if problems:
        pytest.xfail(" | ".join(problems))
    results = rel.wait_results(list(by_id), timeout=10)
    assert len(results) == REQUESTS
    assert rel.sim_client.stats()["effective_references"] == REQUESTS
    assert worker.is_running() and worker.pid == pid, "the worker was replaced"


@pytest.mark.slow
def test_redis_restart_mid_run(rel: RelStack) -> None:
    def restart() -> None:
        # SIGTERM (Redis flushes its AOF), then start again on the same port
        rel.server.restart()

    _run_through(rel, restart, "redis restart")


@pytest.mark.slow
def test_redis_crash_and_5_s_outage_mid_run(rel: RelStack) -> None:
    def crash_and_come_back() -> None:
        # SIGKILL: nothing flushed beyond what the AOF already holds; down for 5 s
        # (longer than the ledger client's own retries ride out).
        rel.server.kill()
        time.sleep(5)  # the outage itself, not an assertion
        rel.server.start()

    _run_through(rel, crash_and_come_back, "redis kill -9 + 5 s down")
