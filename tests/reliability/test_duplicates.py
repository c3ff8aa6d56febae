"""Duplicates: the same request delivered several times, at once, to several workers.

Celery on Redis delivers at least once, and producers retry: the ledger must turn every
extra copy into a ``duplicate`` audit record, never into a second provider call or a
second result event.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.reliability.conftest import RelStack, wait_until


@pytest.mark.slow
def test_copies_racing_on_three_workers_call_the_provider_once(rel: RelStack) -> None:
    # Given three worker processes and a provider slow enough for copies to overlap
    rel.start_workers(3, concurrency=8)
    requests = rel.seeded_requests(100)
    rel.sim_client.set_faults("idpass", latency_ms=200)
    rng = random.Random(20240611)
    copies = [request for request in requests for _ in range(rng.randint(3, 5))]
    rng.shuffle(copies)
    # When every request is delivered 3-5 times, all copies queued at once
    rel.producer.submit_many(copies)
    ids = [r["request_id"] for r in requests]
    results = rel.wait_results(ids, timeout=75)
    # Then each request made exactly one provider call and has exactly one result
    assert Counter(e["outcome"] for e in results.values()) == {"cancelled": 100}
    for request in requests:
        calls = rel.sim_client.calls("idpass", request["reference"])
        assert len(calls) == 1, f"{request['request_id']}: {len(calls)} provider calls"
    assert rel.effective_duplicates() == []
    # and every extra copy ended as a duplicate on the record, none unaccounted for
    extra = len(copies) - len(requests)

    def duplicates() -> int:
        return sum(1 for r in rel.audit() if r["step"] == "duplicate")

    wait_until(lambda: duplicates() >= extra, 60, f"{extra} duplicate records")
    steps = Counter(r["step"] for r in rel.audit())
    assert steps["duplicate"] == extra and steps["completed"] == 100
    assert steps["received"] == 100
    rel.assert_chain_intact()
    # (the race was real: copies found another worker's live lease and waited)
    deferred = rel.worker_logs().count('"event": "deferred"')
    assert deferred > 0, "no copy ever overlapped another in flight"
    spread = Counter(r["request_id"] for r in copies)
    print(f"\nduplicates: 100 requests x 3-5 copies = {len(copies)} deliveries "
          f"({dict(sorted(Counter(spread.values()).items()))}) on 3 workers: 100 provider "
          f"calls, 100 result events, {steps['duplicate']} duplicate records, {deferred} "
          f"deferrals behind a live lease")
