"""Crash: ``kill -9`` of a worker process in the middle of a run.

What must hold afterwards: every request ends with exactly one result event (none lost,
none doubled), and the provider saw at most one *effective* cancel per session. A cancel
that landed while its worker died is read back (``recovered: true``), not sent again.
A message kombu had popped (BRPOP) but not yet recorded as un-acked when the worker died
is gone from the broker: the reconciler (a real ``celery beat`` enqueuing
``idvcancel.reconcile``) pushes it again after its age; the tests never resubmit.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import cast

import pytest

from tests.reliability.conftest import RECONCILE_AGE, RELIABILITY_ENV, RelStack, wait_until
from worker.broker import wire

VISIBILITY = float(RELIABILITY_ENV["IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"])
CANCEL_PATH = "/idpass-api/idpass/cancel"


def _cancel_calls(rel: RelStack, reference: str) -> list[dict[str, object]]:
    return [c for c in rel.sim_client.calls("idpass", reference) if c["path"] == CANCEL_PATH]


def _wait_out_visibility(killed_at: float) -> None:
    """The scenario, not an assertion: the replacement worker comes up once the dead
    worker's messages are past the visibility timeout (kombu restores them at start-up;
    see test_survivor_takes_over_within_the_visibility_timeout for the other case)."""
    remaining = killed_at + VISIBILITY + 1.0 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


@dataclass
class RunFigures:
    """One kill -9 run, as docs/reliability.md quotes it."""

    run: int
    requests: int
    done_before: int
    mid_call: int
    recovered: int
    lost: int
    doubled: int
    resubmitted: dict[str, int]
    needless: int
    seconds: float

    def line(self) -> str:
        return (f"run {self.run}: {self.requests} requests, {self.done_before} done before "
                f"the kill, {self.mid_call} mid-call, {self.recovered} read back; lost "
                f"{self.lost}, doubled {self.doubled}, resubmitted by the reconciler "
                f"{sum(self.resubmitted.values())} {self.resubmitted} (original came too: "
                f"{self.needless}), all done {self.seconds:.1f} s after the kill")


RUNS = 10
REQUESTS_PER_RUN = 200


@pytest.mark.slow
def test_kill_9_mid_run_ten_times_loses_nothing_and_cancels_each_session_once(
        rel: RelStack) -> None:
    # Given celery beat running the reconciler, one worker, ID Pass answering in 100 ms
    rel.start_beat()
    worker = rel.start_worker(concurrency=16)
    rel.sim_client.set_faults("idpass", latency_ms=100)
    figures: list[RunFigures] = []
    for run in range(RUNS):
        # and a run of 200 cancels
        requests = rel.seeded_requests(REQUESTS_PER_RUN, prefix=f"k{run}")
        ids = [r["request_id"] for r in requests]
        rel.producer.submit_many(requests)
        # (killed at another point of each run, from 20 done to 146: late in a run the
        # consumer has room to prefetch and pops all the time, kombu's window is open)
        due = 20 + 14 * run

        def due_and_in_flight(ids: list[str] = ids, due: int = due) -> bool:
            phases = rel.phases(ids)
            return phases["done"] >= due and phases["calling"] >= 4

        wait_until(due_and_in_flight, 60, f"{due} done and calls in flight")
        # When the worker is killed -9 mid-run (its pool with it)
        worker.kill()
        killed_at = time.monotonic()
        phases = {rid: rel.ledger(rid).get("phase") for rid in ids}
        in_flight = {rid for rid, phase in phases.items() if phase == "calling"}
        assert worker.returncode is not None and worker.returncode < 0
        # and a new worker is started once the dead one's messages are due again
        _wait_out_visibility(killed_at)
        worker = rel.start_worker(concurrency=16)
        # Then every request ends exactly once, cancelled, with nobody resubmitting by hand
        # (what the broker lost, the reconciler pushes again after its age)
        results = rel.wait_results(ids, timeout=RECONCILE_AGE + 45)
        seconds = time.monotonic() - killed_at
        assert {e["outcome"] for e in results.values()} == {"cancelled"}
        # and no session was cancelled twice at the provider
        for request in requests:
            assert len(rel.sim_client.calls("idpass", request["reference"],
                                            effective=True)) == 1
            assert rel.sim_client.status("idpass", request["reference"]) == "cancelled"
        # and the calls that landed while the worker died were read back, not sent again
        recovered = {rid for rid, e in results.items() if e["recovered"]}
        assert recovered <= in_flight
        for rid in recovered:
            assert "recovery" in [r["step"] for r in rel.audit(rid)]
        # and whatever the reconciler pushed again, it audited
        resubmitted = rel.resubmissions(ids)
        by_phase = dict(Counter(r["phase"] or "none" for r in resubmitted))
        needless = {r["request_id"] for r in resubmitted
                    if "duplicate" in [a["step"] for a in rel.audit(r["request_id"])]}
        figures.append(RunFigures(run + 1, len(ids), sum(p == "done" for p in phases.values()),
                                  len(in_flight), len(recovered), 0, 0, by_phase,
                                  len(needless), seconds))
        print(f"\ncrash {figures[-1].line()}")
    assert rel.effective_duplicates() == []
    assert any(f.recovered for f in figures), "no request was recovered by reading back"
    rel.assert_chain_intact()
    assert rel.redis.zcard("idvcancel:intake") == 0, "the intake index holds finished requests"
    total = sum(sum(f.resubmitted.values()) for f in figures)
    print(f"\ncrash, {RUNS} runs: {RUNS * REQUESTS_PER_RUN} requests, lost 0, doubled 0, "
          f"resubmitted {total} (original came too: {sum(f.needless for f in figures)}), "
          f"recovery {min(f.seconds for f in figures):.1f}-"
          f"{max(f.seconds for f in figures):.1f} s after the kill")


def test_messages_the_broker_lost_are_pushed_again_by_the_reconciler(rel: RelStack) -> None:
    # Given beat running the reconciler, and 60 cancels queued while no worker runs
    rel.start_beat()
    requests = rel.seeded_requests(60, prefix="lost")
    ids = [r["request_id"] for r in requests]
    rel.producer.submit_many(requests)
    # When kombu's window strikes five times: popped (BRPOP), never recorded as un-acked
    popped = [cast("str | None", rel.redis.rpop("idvcancel")) or "" for _ in range(5)]
    lost = [rid for rid in map(wire.request_id_of, popped) if rid]
    assert len(lost) == 5 and rel.redis.hlen("unacked") == 0
    pushed_at = time.monotonic()
    # and a worker starts on what is left
    rel.start_worker(concurrency=8)
    # Then every request ends once, cancelled, each session cancelled once
    results = rel.wait_results(ids, timeout=RECONCILE_AGE + 40)
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    assert rel.effective_duplicates() == []
    for request in requests:
        assert len(rel.sim_client.calls("idpass", request["reference"], effective=True)) == 1
    # and exactly the five lost ones were pushed again, once each, and audited
    resubmitted = rel.resubmissions(ids)
    assert sorted(r["request_id"] for r in resubmitted) == sorted(lost)
    assert {r["phase"] for r in resubmitted} == {None}
    assert all(r["waited_s"] >= RECONCILE_AGE for r in resubmitted)
    for rid in lost:
        assert [r["step"] for r in rel.audit(rid)] == [
            "resubmitted", "received", "attempt", "completed"]
    rel.assert_chain_intact()
    assert rel.redis.zcard("idvcancel:intake") == 0
    print(f"\nlost in kombu's window: 5 of 60, all pushed again and done "
          f"{time.monotonic() - pushed_at:.1f} s after the loss (age {RECONCILE_AGE:g} s)")


@pytest.mark.slow
def test_an_orphaned_call_whose_redelivery_was_lost_is_pushed_again_and_read_back(
        rel: RelStack) -> None:
    # Given beat running the reconciler and one cancel whose provider call takes 2.5 s
    rel.start_beat()
    worker = rel.start_worker(concurrency=4)
    (request,) = rel.seeded_requests(1)
    rid = request["request_id"]
    rel.sim_client.set_faults("idpass", latency_ms=2500)
    rel.producer.submit(request)
    wait_until(lambda: rel.ledger(rid).get("phase") == "calling", 30, "the request is mid-call")
    # When the worker dies with the call on the wire, the call lands, and the message's
    # un-acked record is gone too (what a Redis crash in kombu's window leaves behind)
    worker.kill()
    rel.redis.delete("unacked", "unacked_index")
    wait_until(lambda: rel.sim_client.calls("idpass", request["reference"], effective=True),
               30, "the orphaned call landed at the provider")
    rel.sim_client.set_faults("idpass")
    rel.start_worker(concurrency=4)
    # Then, its lease long past, the reconciler pushes it again and the new worker reads the
    # status back instead of cancelling twice
    event = rel.wait_results([rid], timeout=RECONCILE_AGE + 40)[rid]
    assert event["outcome"] == "cancelled" and event["recovered"] is True
    assert len(_cancel_calls(rel, request["reference"])) == 1
    steps = [r["step"] for r in rel.audit(rid)]
    assert steps == ["received", "resubmitted", "recovery", "completed"], steps
    (record,) = rel.resubmissions([rid])
    assert record["phase"] == "calling"
    rel.assert_chain_intact()


def test_kill_9_while_the_call_is_in_flight_reads_the_cancel_back(rel: RelStack) -> None:
    # Given one cancel whose provider call takes 2.5 s
    worker = rel.start_worker(concurrency=4)
    (request,) = rel.seeded_requests(1)
    rel.sim_client.set_faults("idpass", latency_ms=2500)
    rel.producer.submit(request)
    wait_until(lambda: rel.ledger(request["request_id"]).get("phase") == "calling", 30,
               "the request is mid-call")
    # When the worker dies while the call is on the wire, and the call lands anyway
    worker.kill()
    killed_at = time.monotonic()
    wait_until(lambda: rel.sim_client.calls("idpass", request["reference"], effective=True),
               30, "the orphaned call landed at the provider")
    rel.sim_client.set_faults("idpass")
    _wait_out_visibility(killed_at)
    rel.start_worker(concurrency=4)
    # Then the new worker reads the status back instead of cancelling again
    event = rel.wait_results([request["request_id"]], timeout=60)[request["request_id"]]
    assert event["outcome"] == "cancelled"
    assert event["recovered"] is True
    assert event["provider_status"] == "cancelled"
    assert len(_cancel_calls(rel, request["reference"])) == 1
    steps = [r["step"] for r in rel.audit(request["request_id"])]
    assert steps.count("recovery") == 1 and steps[-1] == "completed"
    rel.assert_chain_intact()


def test_cancel_that_landed_but_whose_answer_was_lost_ends_cancelled(rel: RelStack) -> None:
    # Given the provider applies the cancel, then hangs past our HTTP timeout
    rel.start_worker(concurrency=4)
    (request,) = rel.seeded_requests(1)
    rel.sim_client.set_faults("idpass", timeout_next=1, apply_on_timeout=True, hang_seconds=4)
    # When the cancel is submitted
    rel.producer.submit(request)
    event = rel.wait_results([request["request_id"]], timeout=60)[request["request_id"]]
    # Then it was cancelled once, and the result says so (read back, not re-sent)
    assert len(rel.sim_client.calls("idpass", request["reference"], effective=True)) == 1
    assert event["outcome"] == "cancelled", event
    assert event["recovered"] is True
    assert len(_cancel_calls(rel, request["reference"])) == 1


@pytest.mark.slow
def test_survivor_takes_over_within_the_visibility_timeout(rel: RelStack) -> None:
    # Given beat running the reconciler and two workers sharing a run of 150 requests
    rel.start_beat()
    doomed, _survivor = rel.start_workers(2, concurrency=8)
    requests = rel.seeded_requests(150)
    ids = [r["request_id"] for r in requests]
    rel.sim_client.set_faults("idpass", latency_ms=300)
    rel.producer.submit_many(requests)
    wait_until(lambda: len(rel.events()) >= 20, 60, "20 results")
    # When one of them is killed -9
    doomed.kill()
    killed_at = time.time()
    # Then every request ends once, cancelled, each session cancelled once
    results = rel.wait_results(ids, timeout=RECONCILE_AGE + 24)
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    assert rel.effective_duplicates() == []
    # and the survivor took over the dead one's messages within the visibility timeout
    # plus slack; only what the broker had lost (pushed again by the reconciler) took longer
    resubmitted = {r["request_id"] for r in rel.resubmissions(ids)}
    finished = {e["request_id"]: int(entry_id.split("-")[0]) / 1000
                for entry_id, e in rel.stream("idvcancel:results", "event")}
    late = {rid for rid in ids if finished[rid] - killed_at > VISIBILITY + 24}
    assert late <= resubmitted, f"late without a loss: {sorted(late - resubmitted)}"
    print(f"\nsurvivor: {len(ids)} requests, all done "
          f"{max(finished[rid] for rid in ids) - killed_at:.1f} s after the kill; "
          f"resubmitted by the reconciler {len(resubmitted)}, lost 0, doubled 0")
