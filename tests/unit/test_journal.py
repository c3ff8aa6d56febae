"""The journal under concurrency: many threads in two "processes" (two Journal objects),
one real Redis. Group commit must keep one unbroken chain and apply every step once."""

from __future__ import annotations

import threading

import redis

from worker.journal.ledger import read
from worker.journal.steps import Journal, Moved
from worker.journal.verify import verify_stream


def test_concurrent_steps_keep_one_unbroken_chain(redis_client: redis.Redis) -> None:
    # Given two journals (as two worker processes would have) on one Redis
    journals = [Journal(redis_client), Journal(redis_client)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        journal = journals[t % 2]
        try:
            for i in range(40):
                key = f"idvcancel:req:j-{t}-{i}"
                assert journal.apply(key, 0, ledger={"phase": "calling"},
                                     records=[{"step": "received", "t": t, "i": i}]) is None
                assert journal.apply(key, 1, ledger={"phase": "done"}, event={"id": key},
                                     records=[{"step": "a"}, {"step": "completed"}]) is None
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    # When 16 threads write at once
    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every step applied exactly once, and the chain verifies end to end
    assert errors == []
    assert redis_client.xlen("idvcancel:results") == 16 * 40
    count, broken = verify_stream(redis_client)
    assert broken is None and count == 16 * 40 * 3


def test_a_moved_ledger_is_reported_and_later_steps_still_apply(
        redis_client: redis.Redis) -> None:
    journal = Journal(redis_client)
    assert journal.apply("idvcancel:req:x", 0, ledger={"phase": "calling"},
                         records=[{"step": "received"}]) is None
    # When a step expects a version the ledger no longer has
    moved = journal.apply("idvcancel:req:x", 0, ledger={"phase": "done"},
                          records=[{"step": "completed"}])
    # Then it is refused as Moved and nothing of it was written
    assert moved == Moved(1)
    assert read(redis_client, "idvcancel:req:x").phase == "calling"
    assert journal.apply("idvcancel:req:y", 0, records=[{"step": "received"}]) is None
    assert verify_stream(redis_client) == (2, None)


def test_the_step_that_finishes_a_request_takes_it_out_of_the_intake_index(
        redis_client: redis.Redis) -> None:
    # Given two requests in the intake index
    for rid in ("a", "b"):
        redis_client.zadd("idvcancel:intake", {rid: 1.0})
        redis_client.hset("idvcancel:intake:requests", rid, "{}")
    journal = Journal(redis_client)
    # When one is claimed (calling) and scheduled for a retry (waiting)
    assert journal.apply("idvcancel:req:a", 0, ledger={"phase": "calling"}) is None
    assert journal.apply("idvcancel:req:a", 1, ledger={"phase": "waiting"}) is None
    # Then it is still indexed: in flight
    assert redis_client.zscore("idvcancel:intake", "a") == 1.0
    # When its ledger becomes done
    assert journal.apply("idvcancel:req:a", 2, ledger={"phase": "done"},
                         records=[{"step": "completed"}]) is None
    # Then it left the index in that step; the other request stays
    assert redis_client.zrange("idvcancel:intake", 0, -1) == ["b"]
    assert redis_client.hkeys("idvcancel:intake:requests") == ["b"]
    # and a step that moved (refused) forgets nothing
    assert journal.apply("idvcancel:req:b", 5, ledger={"phase": "done"}) == Moved(0)
    assert redis_client.zrange("idvcancel:intake", 0, -1) == ["b"]
    # and a message ledger (no request id) has nothing to forget
    assert journal.apply("idvcancel:msg:b", 0, ledger={"phase": "done"}) is None
    assert redis_client.zrange("idvcancel:intake", 0, -1) == ["b"]


def test_apply_many_writes_records_for_several_requests_in_one_chain(
        redis_client: redis.Redis) -> None:
    # Given three requests, the second of which moved meanwhile
    journal = Journal(redis_client)
    assert journal.apply("idvcancel:req:m", 0, ledger={"phase": "calling"}) is None
    # When records for all three are written at once
    answers = journal.apply_many([
        ("idvcancel:req:l", 0, [{"step": "resubmitted", "n": 1}]),
        ("idvcancel:req:m", 0, [{"step": "resubmitted", "n": 2}]),
        ("idvcancel:req:n", 0, [{"step": "resubmitted", "n": 3}]),
    ])
    # Then the moved one is refused and the others applied, in one unbroken chain
    assert answers == [None, Moved(1), None]
    assert verify_stream(redis_client) == (2, None)
    assert journal.apply_many([]) == []


def test_a_chain_conflict_between_processes_is_counted(redis_client: redis.Redis) -> None:
    """Given two journals (two worker processes) that each know the chain's head, When
    one appends and then the other appends on the head it last saw, Then the second's
    first script call is refused (the head moved), it seals again and applies, and the
    metric counts one head_moved answer (what bench/scaling.py reads per process)."""
    from prometheus_client import REGISTRY

    def count(answer: str) -> float:
        return REGISTRY.get_sample_value("idvcancel_journal_calls_total",
                                         {"answer": answer}) or 0.0

    first, second = Journal(redis_client), Journal(redis_client)
    assert second.apply("idvcancel:req:c-0", 0, records=[{"step": "received"}]) is None
    assert first.apply("idvcancel:req:c-1", 0, records=[{"step": "received"}]) is None
    moved, applied = count("head_moved"), count("applied")
    # second still holds the head from before first's append
    assert second.apply("idvcancel:req:c-2", 0, records=[{"step": "received"}]) is None
    assert (count("head_moved") - moved, count("applied") - applied) == (1, 1)
    count_records, broken = verify_stream(redis_client)
    assert broken is None and count_records == 3


def test_a_failed_commit_fails_its_steps_and_the_next_thread_still_leads(
        redis_client: redis.Redis) -> None:
    """Given a journal whose next script call fails (Redis went away mid-call), When
    threads write steps at that moment, Then each step in the failed call raises the
    error in its own thread, the lead passes on (nobody hangs), and later steps apply."""
    journal = Journal(redis_client)
    real = journal._script
    failures = [redis.ConnectionError("gone")]

    def flaky(*, keys: list[str], args: list[str]) -> object:
        if failures:
            raise failures.pop()
        return real(keys=keys, args=args)

    journal._script = flaky  # type: ignore[assignment] # the seam: one failing call
    outcomes: list[str] = []

    def work(i: int) -> None:
        try:
            journal.apply(f"idvcancel:req:f-{i}", 0, records=[{"step": "received"}])
            outcomes.append("applied")
        except redis.ConnectionError:
            outcomes.append("failed")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert "failed" in outcomes and len(outcomes) == 8
    assert journal.apply("idvcancel:req:f-after", 0, records=[{"step": "received"}]) is None
    assert verify_stream(redis_client) == (outcomes.count("applied") + 1, None)
