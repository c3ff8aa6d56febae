"""Backoff bounds and the hash chain."""

from __future__ import annotations

import random

import pytest

from worker.delivery.retry import RetryPolicy
from worker.journal import chain as audit


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8])
def test_backoff_stays_in_its_full_jitter_window(attempt: int) -> None:
    # Given a policy base 1 s, cap 10 s
    policy = RetryPolicy(base=1, cap=10, max_attempts=20)
    rng = random.Random(attempt)
    # When many delays are drawn
    delays = [policy.delay(attempt, rng=rng) for _ in range(500)]
    # Then each lies in [0, min(cap, base * 2^(n-1))] and they are spread (jittered)
    window = min(10.0, 2.0 ** (attempt - 1))
    assert all(d is not None and 0 <= d <= window for d in delays)
    assert max(d for d in delays if d is not None) > window * 0.8
    assert min(d for d in delays if d is not None) < window * 0.2


def test_budget_is_spent_after_max_attempts() -> None:
    policy = RetryPolicy(base=1, cap=10, max_attempts=3)
    assert policy.delay(2) is not None
    assert policy.delay(3) is None


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base=0.1, cap=1, max_attempts=5)
    assert policy.delay(1, retry_after=4.0) == pytest.approx(4.0, abs=0.11)


def _chain(n: int) -> list[tuple[str, dict[str, object]]]:
    records, _head = audit.seal_all(({"step": "x", "i": i} for i in range(n)), "")
    return [(f"{i}-0", r) for i, r in enumerate(records)]


def test_a_sealed_chain_verifies() -> None:
    assert audit.verify(_chain(5)) == (5, None)


def test_editing_a_record_is_found_and_named() -> None:
    chain = _chain(5)
    chain[2][1]["i"] = 99
    count, broken = audit.verify(chain)
    assert count == 2 and broken is not None
    assert broken.record_id == "2-0" and "edited" in broken.reason


def test_removing_a_record_is_found() -> None:
    chain = _chain(5)
    del chain[3]
    count, broken = audit.verify(chain)
    assert count == 3 and broken is not None and broken.seq == 5


def test_inserting_a_record_is_found() -> None:
    chain = _chain(4)
    forged = audit.seal({"step": "forged"}, 3, str(chain[1][1]["hash"]))
    chain.insert(2, ("x-0", forged))
    _count, broken = audit.verify(chain)
    assert broken is not None and broken.position == 3


def test_chain_continues_across_a_head() -> None:
    first, head = audit.seal_all([{"a": 1}], "")
    second, _ = audit.seal_all([{"a": 2}], head)
    assert second[0]["prev_hash"] == first[0]["hash"] and second[0]["seq"] == 2
