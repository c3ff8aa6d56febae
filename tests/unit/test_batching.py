"""The Coalescer under real threads: concurrent submits become batched flush calls, each
caller gets its own result or error, and no caller is ever left waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from worker.providers import errors
from worker.providers.batching import BatchError, BatchTimeout, Coalescer

Answer = Mapping[str, str | Exception]


@dataclass
class Provider:
    """A fake batch endpoint: records each flush, answers ``done:<item>`` unless told."""

    answer: Callable[[str, list[str]], Answer] | None = None
    calls: list[tuple[str, list[str], int]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def flush(self, group: str, items: list[str]) -> Answer:
        with self.lock:
            self.calls.append((group, list(items), threading.get_ident()))
            self.times.append(time.monotonic())
        if self.answer is not None:
            return self.answer(group, items)
        return {item: f"done:{item}" for item in items}

    def batches(self) -> list[list[str]]:
        return [items for _, items, _ in self.calls]


def run_together(
    coalescer: Coalescer[str, str, str], submits: Sequence[tuple[str, str]]
) -> list[str | BaseException]:
    """Submit each (group, item) from its own thread, all released at once; each
    thread's result or raised exception, in order."""
    outcomes: list[str | BaseException] = [BatchError("never ran")] * len(submits)
    barrier = threading.Barrier(len(submits))

    def call(index: int, group: str, item: str) -> None:
        barrier.wait()
        try:
            outcomes[index] = coalescer.submit(group, item)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            outcomes[index] = exc

    threads = [threading.Thread(target=call, args=(i, g, it)) for i, (g, it) in
               enumerate(submits)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a caller was left waiting"
    return outcomes


# -- batching -------------------------------------------------------------------------------
def test_concurrent_submits_share_one_flush_and_each_gets_its_own_result() -> None:
    # Given a coalescer with a window long enough for 30 threads to arrive
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=0.5, max_size=500, timeout=5)
    items = [f"t{i}" for i in range(30)]
    # When 30 threads submit at once
    outcomes = run_together(coalescer, [("g", item) for item in items])
    # Then one flush carried all 30 items, and each caller got its own item's result
    (batch,) = provider.batches()
    assert sorted(batch) == sorted(items)
    assert outcomes == [f"done:{item}" for item in items]


def test_a_lone_submit_is_flushed_when_the_window_ends() -> None:
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=0.05, max_size=500)
    started = time.monotonic()
    assert coalescer.submit("g", "only") == "done:only"
    assert time.monotonic() - started >= 0.05
    assert provider.batches() == [["only"]]


def test_more_than_max_size_items_are_split_into_two_flushes() -> None:
    # Given at most 500 items a call, and a window far longer than the test should take
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=2.0, max_size=500, timeout=5)
    items = [f"t{i}" for i in range(501)]
    # When 501 threads submit at once
    started = time.monotonic()
    outcomes = run_together(coalescer, [("g", item) for item in items])
    # Then two calls: one full batch of 500, one with the remaining item
    assert [len(batch) for batch in provider.batches()] == [500, 1]
    assert sorted(item for batch in provider.batches() for item in batch) == sorted(items)
    assert outcomes == [f"done:{item}" for item in items]
    # And the full batch went out at once; only the lone item's batch waited its window
    full_at, lone_at = provider.times
    assert full_at - started < 2.0 <= lone_at - started


def test_a_full_batch_is_flushed_without_waiting_for_the_window() -> None:
    # Given batches of at most 3 and a 10 s window
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=10.0, max_size=3, timeout=5)
    # When exactly 3 items arrive
    started = time.monotonic()
    outcomes = run_together(coalescer, [("g", "a"), ("g", "b"), ("g", "c")])
    # Then they are flushed together at once
    assert time.monotonic() - started < 5.0
    assert outcomes == ["done:a", "done:b", "done:c"]
    assert [sorted(batch) for batch in provider.batches()] == [["a", "b", "c"]]


def test_groups_are_flushed_separately() -> None:
    # Given items of two groups (two grace periods) arriving together
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=0.3, max_size=500, timeout=5)
    submits = [("0", f"a{i}") for i in range(5)] + [("14", f"b{i}") for i in range(5)]
    # When they are submitted at once
    outcomes = run_together(coalescer, submits)
    # Then one call per group, each carrying only its own group's items
    by_group = {group: sorted(items) for group, items, _ in provider.calls}
    assert by_group == {"0": [f"a{i}" for i in range(5)], "14": [f"b{i}" for i in range(5)]}
    assert outcomes == [f"done:{item}" for _, item in submits]


def test_the_same_item_twice_is_flushed_once_and_answered_to_both() -> None:
    # Given two callers naming one item (two request ids for one transaction)
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=0.3, max_size=500, timeout=5)
    # When they submit it together with another item
    outcomes = run_together(coalescer, [("g", "same"), ("g", "same"), ("g", "other")])
    # Then the flush carried it once, and both callers got its result
    (batch,) = provider.batches()
    assert sorted(batch) == ["other", "same"]
    assert outcomes == ["done:same", "done:same", "done:other"]


def test_window_zero_is_one_flush_per_item_in_the_callers_thread() -> None:
    # Given batching turned off
    provider = Provider()
    coalescer = Coalescer(provider.flush, window=0, max_size=500)
    # When 10 threads submit at once
    outcomes = run_together(coalescer, [("g", f"t{i}") for i in range(10)])
    # Then each item had its own call, and each caller its result
    assert sorted(provider.batches()) == sorted([f"t{i}"] for i in range(10))
    assert outcomes == [f"done:t{i}" for i in range(10)]
    assert len({ident for _, _, ident in provider.calls}) == 10
    # And a single caller's flush runs in that caller's own thread
    assert coalescer.submit("g", "mine") == "done:mine"
    assert provider.calls[-1][2] == threading.get_ident()


# -- results and errors -----------------------------------------------------------------
def test_each_caller_gets_its_own_result_or_its_own_error() -> None:
    # Given a call in which some items fail and the others succeed
    def partly(_: str, items: list[str]) -> Answer:
        return {item: errors.NotFound(f"{item} not found", http_status=200)
                if item.startswith("gone") else f"done:{item}" for item in items}

    provider = Provider(answer=partly)
    coalescer = Coalescer(provider.flush, window=0.3, max_size=500, timeout=5)
    items = ["a", "gone1", "b", "gone2", "gone1"]
    # When all are submitted together
    outcomes = run_together(coalescer, [("g", item) for item in items])
    # Then the one call answered each caller on its own
    assert len(provider.calls) == 1
    assert outcomes[0] == "done:a" and outcomes[2] == "done:b"
    for index, item in [(1, "gone1"), (3, "gone2"), (4, "gone1")]:
        error = outcomes[index]
        assert isinstance(error, errors.NotFound)
        assert error.message == f"{item} not found" and error.http_status == 200
    # And the two callers of the same failing item each raised an exception of their own
    assert outcomes[1] is not outcomes[4]


def test_an_error_of_the_whole_call_is_raised_in_every_caller() -> None:
    # Given a call that fails as a whole (rate limited)
    def limited(_: str, __: list[str]) -> Answer:
        raise errors.RateLimited("slow down", retry_after=2.0, http_status=429)

    provider = Provider(answer=limited)
    coalescer = Coalescer(provider.flush, window=0.3, max_size=500, timeout=5)
    # When 8 callers share the batch
    outcomes = run_together(coalescer, [("g", f"t{i}") for i in range(8)])
    # Then one call was made and every caller raised the rate limit, with its details
    assert len(provider.calls) == 1
    for outcome in outcomes:
        assert isinstance(outcome, errors.RateLimited)
        assert outcome.retry_after == 2.0 and outcome.http_status == 429
        assert outcome.code == "rate_limited" and outcome.message == "slow down"
    assert len({id(outcome) for outcome in outcomes}) == 8


def test_an_item_the_answer_leaves_out_gets_a_batch_error() -> None:
    provider = Provider(answer=lambda _, items: {items[0]: "first only"})
    coalescer = Coalescer(provider.flush, window=0, max_size=500)
    assert coalescer.submit("g", "a") == "first only"
    provider.answer = lambda _, __: {}
    with pytest.raises(BatchError, match="no result"):
        coalescer.submit("g", "b")


# -- no caller is ever lost ----------------------------------------------------------------
def test_a_failing_flush_wakes_every_waiter_with_its_error() -> None:
    # Given a flush with a bug
    def broken(_: str, __: list[str]) -> Answer:
        raise KeyError("bug")

    provider = Provider(answer=broken)
    coalescer = Coalescer(provider.flush, window=0.2, max_size=500, timeout=5)
    # When 10 callers share the batch / Then none hangs, and each raises the bug
    outcomes = run_together(coalescer, [("g", f"t{i}") for i in range(10)])
    assert all(isinstance(outcome, KeyError) for outcome in outcomes)


class Stop(BaseException):
    """Something that is not an Exception (as SystemExit is) stopping the leader."""


def test_a_leader_stopped_by_a_base_exception_still_wakes_every_waiter() -> None:
    # Given a flush interrupted by a BaseException
    def interrupted(_: str, __: list[str]) -> Answer:
        raise Stop

    provider = Provider(answer=interrupted)
    coalescer = Coalescer(provider.flush, window=0.2, max_size=500, timeout=5)
    # When 6 callers share the batch
    outcomes = run_together(coalescer, [("g", f"t{i}") for i in range(6)])
    # Then the leader's thread sees the BaseException, every other caller a BatchError
    assert sum(isinstance(outcome, Stop) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, BatchError) for outcome in outcomes) == 5
    # And the group is not stuck: the next submit gets a fresh batch
    provider.answer = None
    assert coalescer.submit("g", "later") == "done:later"


def test_a_hung_flush_times_its_waiters_out() -> None:
    # Given a flush that does not return until released
    release = threading.Event()

    def hung(_: str, items: list[str]) -> Answer:
        release.wait(10)
        return {item: "late" for item in items}

    provider = Provider(answer=hung)
    coalescer = Coalescer(provider.flush, window=0.1, max_size=500, timeout=0.3)
    results: list[str | BaseException] = []
    leader = threading.Thread(target=lambda: results.append(coalescer.submit("g", "lead")))
    leader.start()
    time.sleep(0.02)  # the leader's batch is open
    # When another caller joins the batch / Then it gives up after window + timeout
    started = time.monotonic()
    with pytest.raises(BatchTimeout):
        coalescer.submit("g", "waiter")
    assert 0.3 <= time.monotonic() - started < 3
    # And the leader, once its call returns, gets its own answer
    release.set()
    leader.join(5)
    assert results == ["late"]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        Coalescer(Provider().flush, window=-1, max_size=5)
    with pytest.raises(ValueError, match="max_size"):
        Coalescer(Provider().flush, window=0.1, max_size=0)
