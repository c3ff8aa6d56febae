"""Crash: ``kill -9`` of a worker process in the middle of a run.

What must hold afterwards: every request ends with exactly one result event (none lost,
none doubled), and the provider saw at most one *effective* cancel per session. A cancel
that landed while its worker died is read back (``recovered: true``), not sent again.
"""

from __future__ import annotations

import time

import pytest

from tests.reliability.conftest import RELIABILITY_ENV, RelStack, wait_until

VISIBILITY = float(RELIABILITY_ENV["IDVCANCEL_VISIBILITY_TIMEOUT_SECONDS"])
CANCEL_PATH = "/idpass-api/idpass/cancel"


def _cancel_calls(rel: RelStack, reference: str) -> list[dict[str, object]]:
    return [c for c in rel.sim_client.calls("idpass", reference) if c["path"] == CANCEL_PATH]


KOMBU_WINDOW = (
    "LOST: a message the killed worker had popped (BRPOP) but not yet recorded as un-acked "
    "(kombu's Redis transport writes that record in a separate step) is in neither the "
    "queue nor the un-acked hash: kombu is at-most-once in that window. Resubmitting the "
    "requests without a result completed them exactly once")


def _results_or_resubmit(rel: RelStack, requests: list[dict[str, object]], timeout: float
                         ) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Wait for every result; requests that never reached any worker (no ledger at all)
    are resubmitted, as a producer reconciling its submissions would. Returns the
    results and the ids that had to be resubmitted."""
    ids = [str(r["request_id"]) for r in requests]
    try:
        return rel.wait_results(ids, timeout=timeout), []
    except AssertionError:
        seen = {e["request_id"] for e in rel.events()}
        missing = [rid for rid in ids if rid not in seen]
        if any(rel.ledger(rid) for rid in missing):
            raise  # lost mid-way through our own pipeline: a real failure
        rel.producer.submit_many([r for r in requests if r["request_id"] in missing])
        return rel.wait_results(ids, timeout=30), missing


def _wait_out_visibility(killed_at: float) -> None:
    """The scenario, not an assertion: the replacement worker comes up once the dead
    worker's messages are past the visibility timeout (kombu restores them at start-up;
    see test_survivor_takes_over_within_the_visibility_timeout for the other case)."""
    remaining = killed_at + VISIBILITY + 1.0 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_and_cancels_each_session_once(rel: RelStack) -> None:
    # Given 200 ID Pass cancels in flight against a provider answering in 300 ms
    worker = rel.start_worker(concurrency=16)
    requests = rel.seeded_requests(200)
    ids = [r["request_id"] for r in requests]
    rel.sim_client.set_faults("idpass", latency_ms=300)
    rel.producer.submit_many(requests)
    wait_until(lambda: len(rel.events()) >= 30 and rel.phases(ids)["calling"] >= 4, 60,
               "30 results and calls in flight")
    # When the worker is killed -9 mid-run (its pool with it)
    worker.kill()
    killed_at = time.monotonic()
    in_flight = {rid for rid in ids if rel.ledger(rid).get("phase") == "calling"}
    done_before = len(rel.events())
    assert worker.returncode is not None and worker.returncode < 0
    # and a new worker is started
    _wait_out_visibility(killed_at)
    rel.start_worker(concurrency=16)
    # Then every request ends exactly once, cancelled
    results, lost = _results_or_resubmit(rel, requests, timeout=75)
    recovered_after = time.monotonic() - killed_at
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    # and no session was cancelled twice at the provider
    assert rel.effective_duplicates() == []
    for request in requests:
        assert len(rel.sim_client.calls("idpass", request["reference"], effective=True)) == 1
        assert rel.sim_client.status("idpass", request["reference"]) == "cancelled"
    # and the calls that landed while the worker died were read back, not sent again
    recovered = {rid for rid, e in results.items() if e["recovered"]}
    assert recovered, "no request was recovered by reading the provider back"
    assert recovered <= in_flight
    for rid in recovered:
        assert "recovery" in [r["step"] for r in rel.audit(rid)]
    rel.assert_chain_intact()
    print(f"\ncrash: {len(ids)} requests, {done_before} done before the kill, "
          f"{len(in_flight)} mid-call, {len(recovered)} recovered by read-back, "
          f"all done {recovered_after:.1f} s after the kill; lost {len(lost)}, doubled 0")
    if lost:
        pytest.xfail(f"{KOMBU_WINDOW} ({len(lost)} of {len(ids)}: {lost})")


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
    # Given two workers sharing a run of 150 requests
    doomed, _survivor = rel.start_workers(2, concurrency=8)
    requests = rel.seeded_requests(150)
    ids = [r["request_id"] for r in requests]
    rel.sim_client.set_faults("idpass", latency_ms=300)
    rel.producer.submit_many(requests)
    wait_until(lambda: len(rel.events()) >= 20, 60, "20 results")
    # When one of them is killed -9
    doomed.kill()
    # Then the survivor finishes everything within the visibility timeout plus slack
    results, lost = _results_or_resubmit(rel, requests, timeout=VISIBILITY + 24)
    assert {e["outcome"] for e in results.values()} == {"cancelled"}
    assert rel.effective_duplicates() == []
    if lost:
        pytest.xfail(f"{KOMBU_WINDOW} ({len(lost)} of {len(ids)}: {lost})")
