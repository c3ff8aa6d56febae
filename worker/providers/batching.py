"""Coalescing calls across threads: many callers, one provider call per batch.

``Coalescer.submit(group, item)`` blocks its thread and returns that item's own result.
Items of the same *group* (what one call must share, e.g. a OneSpan grace period) that
arrive within ``window`` seconds of the batch's first item, or until ``max_size`` distinct
items are waiting, go to one ``flush(group, items)`` call, made by the thread whose item
opened the batch (the leader; no background thread). ``flush`` returns a result or an
exception for each item; each caller gets its own, or its own exception raised in its
thread. An exception raised by ``flush`` as a whole is raised in every caller of the
batch. The same item submitted twice to one batch is flushed once and answered to both.

No caller is ever left waiting: if the leader stops without answering (a bug, a
``BaseException``), every caller gets a ``BatchError``; a caller whose answer has not come
``timeout`` seconds after its batch's window closed gets a ``BatchTimeout``. Both mean
"no result is known": the caller should try again.

``window == 0`` turns batching off: each ``submit`` calls ``flush`` with its one item in
its own thread, exactly as an unbatched call would.

Compare ``worker.journal.steps``: there, whichever thread finds the journal free drains the
queue; here, one leader per batch waits out the window first, so that a batch fills.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, NoReturn, TypeVar

from worker.errors import IdvCancelError

G = TypeVar("G", bound=Hashable)  # the group: what one flush call carries for all items
K = TypeVar("K", bound=Hashable)  # an item (its key in the flush's answer)
R = TypeVar("R")  # one item's result

#: ``flush(group, distinct items in arrival order) -> {item: result or exception}``
Flush = Callable[[G, list[K]], Mapping[K, R | Exception]]


class BatchError(IdvCancelError, RuntimeError):
    """The batch gave no result for this item (the leader failed, or left it out)."""


class BatchTimeout(BatchError):
    """The batch's answer did not come in time."""


def _own(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one caller, so that threads raising "the same" error do not
    share (and garble) one traceback; the original when it cannot be copied."""
    try:
        mine = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt from its args
        return exc
    return mine if type(mine) is type(exc) else exc


def _raise(exc: BaseException) -> NoReturn:
    mine = _own(exc)
    if mine is exc:
        raise exc
    # Chained to the original when it was raised (its traceback shows where, once).
    raise mine from (exc if exc.__traceback__ is not None else None)


class _Batch(Generic[G, K, R]):
    """One batch: its items, and once flushed, the answer every caller reads."""

    def __init__(self, group: G, closes_at: float) -> None:
        self.group = group
        self.closes_at = closes_at
        self.items: dict[K, None] = {}  # distinct, in arrival order
        self.full = threading.Event()  # wakes the leader before the window ends
        self.done = threading.Event()
        self.results: Mapping[K, R | Exception] = {}
        self.error: BaseException | None = None

    def finish(self, results: Mapping[K, R | Exception] | None = None,
               error: BaseException | None = None) -> None:
        if results is not None:
            self.results = results
        self.error = error
        self.done.set()

    def answer(self, item: K) -> R:
        if self.error is not None:
            _raise(self.error)
        return answer_for(self.results, item)


def answer_for(results: Mapping[K, R | Exception], item: K) -> R:
    """``item``'s result from a flush's answer, raised when it is an exception."""
    if item not in results:
        raise BatchError("the batched call gave no result for this item")
    value = results[item]
    if isinstance(value, Exception):
        _raise(value)
    return value


class Coalescer(Generic[G, K, R]):
    """Coalesce concurrent ``submit`` calls into batched ``flush`` calls (thread-safe).

    Parameters:
        flush: makes one call for a group's distinct items; returns each item's result or
            exception (an item it leaves out gets a ``BatchError``); raises for the call
            as a whole.
        window: seconds a batch stays open after its first item (0 = no batching).
        max_size: most distinct items in one batch; a full batch is flushed at once.
        timeout: seconds a caller waits for its batch's answer after the window closed,
            before it gives up with ``BatchTimeout`` (None = as long as it takes).

    Example:
        >>> doubled = Coalescer(lambda group, items: {i: i * 2 for i in items},
        ...                     window=0.01, max_size=500)
        >>> doubled.submit("g", 21)
        42
    """

    def __init__(self, flush: Flush[G, K, R], *, window: float, max_size: int,
                 timeout: float | None = None) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._flush = flush
        self.window = window
        self.max_size = max_size
        self.timeout = timeout
        self._lock = threading.Lock()
        self._open: dict[G, _Batch[G, K, R]] = {}

    def submit(self, group: G, item: K) -> R:
        """Block until ``item``'s batch is flushed; return its result or raise its error."""
        if self.window == 0:
            return answer_for(self._flush(group, [item]), item)
        with self._lock:
            batch = self._open.get(group)
            leader = batch is None
            if batch is None:
                batch = _Batch(group, time.monotonic() + self.window)
                self._open[group] = batch
            batch.items[item] = None
            if len(batch.items) >= self.max_size:
                del self._open[group]  # sealed: the next item opens another batch
                batch.full.set()
        if leader:
            self._lead(batch)
        else:
            self._await(batch)
        return batch.answer(item)

    def _await(self, batch: _Batch[G, K, R]) -> None:
        if self.timeout is None:
            batch.done.wait()
            return
        wait = max(0.0, batch.closes_at - time.monotonic()) + self.timeout
        if not batch.done.wait(wait):
            raise BatchTimeout(f"no answer from the batched call within {wait:.3g} s")

    def _lead(self, batch: _Batch[G, K, R]) -> None:
        try:
            batch.full.wait(max(0.0, batch.closes_at - time.monotonic()))
            with self._lock:
                if self._open.get(batch.group) is batch:
                    del self._open[batch.group]
                items = list(batch.items)  # no item joins once it has left ``_open``
            try:
                results = self._flush(batch.group, items)
            except Exception as exc:  # noqa: BLE001 - the call's failure is every caller's
                batch.finish(error=exc)
            else:
                batch.finish(results=results)
        finally:
            if not batch.done.is_set():  # a BaseException (or a bug above): wake everyone
                with self._lock:
                    if self._open.get(batch.group) is batch:
                        del self._open[batch.group]
                batch.finish(error=BatchError("the batch's leader stopped before answering"))
