"""The journal: applies steps atomically (ledger, audit chain, result event, dead
letter) through ``lua/transition.lua``.

The audit chain's hashes are computed here, in Python, and compared-and-set in Redis.
Threads of one process do not each pay a round trip: one thread at a time leads, takes
every step waiting at that moment and sends them in one script call (group commit),
linking their audit records one after the other; when its own step is written it hands
the lead to the thread of the oldest step still waiting (woken, not polling), or leaves
the journal free. If another process appended first, the script answers with the new
head and the batch is linked again on it: each record was serialized once, when its
step was made (``chain.prepare``), so linking again is a substitution and a hash.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from worker import keys, scripts
from worker.contract import canonical_json
from worker.journal import chain as audit
from worker.journal.ledger import Phase
from worker.metrics import JOURNAL_CALLS

#: One child per answer, bound once (a labels() lookup per call costs more).
_APPLIED, _HEAD_MOVED, _LEDGER_MOVED = (JOURNAL_CALLS.labels(answer)
                                        for answer in ("applied", "head_moved", "ledger_moved"))

#: Most steps sent in one script call (bounds how long Redis is busy with one call).
MAX_BATCH = 256
#: A waiting thread looks once this often whether anyone leads (the hand-over wakes it
#: first; this only guards against a wake-up lost to a bug).
_SAFETY_WAIT_SECONDS = 1.0
_FIXED_KEYS = [keys.AUDIT, keys.AUDIT_HEAD, keys.RESULTS, keys.DLQ, keys.DLQ_INDEX,
               keys.INTAKE, keys.INTAKE_REQUESTS, keys.CONFIRM_REQUESTS, keys.CONFIRM_DUE]


@dataclass(frozen=True)
class Moved:
    """The ledger changed under us: re-read it and decide again."""

    version: int


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    entry: Mapping[str, Any]


@dataclass(frozen=True)
class Confirmation:
    """The read-back a step that ends a request makes due (``worker.delivery.confirm``):
    its entry (JSON) and due time, kept under the request id."""

    entry: str
    due: float


@dataclass
class _Step:
    ledger_key: str
    expected_version: int
    # ledger JSON, event, dead letter, dead-letter id, TTL, forget, confirmation, its due
    fixed: list[str]
    records: list[audit.Prepared | dict[str, Any]]
    #: Set when the step is written (or failed), or when its thread is handed the lead.
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    result: Moved | None = None
    error: BaseException | None = None

    def finish(self, result: Moved | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wake.set()


class Journal:
    """Writes steps for all requests of one process.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        ledger_ttl: seconds a finished request's ledger is kept (0 = forever).
        results_maxlen: approximate cap on the results stream (0 = unbounded).
    """

    def __init__(
        self, client: redis.Redis, *, ledger_ttl: int = 0, results_maxlen: int = 0
    ) -> None:
        self.client = client
        self._script = scripts.script(client, "transition")
        self._queue_lock = threading.Lock()
        self._queue: list[_Step] = []
        self._leading = False  # a thread is committing (guarded by _queue_lock)
        self._head = ""
        self.ledger_ttl = ledger_ttl
        self.results_maxlen = results_maxlen

    def apply(
        self,
        ledger_key: str,
        expected_version: int,
        *,
        ledger: Mapping[str, str] | None = None,
        records: Sequence[Mapping[str, Any]] = (),
        event: Mapping[str, Any] | None = None,
        dead_letter: DeadLetter | None = None,
        ledger_ttl: int | None = None,
        confirmation: Confirmation | None = None,
    ) -> Moved | None:
        """Apply one step; None when applied, ``Moved`` when the ledger moved first.
        A ``confirmation`` goes with a step that makes the ledger done."""
        step = self._step(ledger_key, expected_version, ledger=ledger, records=records,
                          event=event, dead_letter=dead_letter, ledger_ttl=ledger_ttl,
                          confirmation=confirmation)
        return self._wait([step])[0]

    def apply_many(self, steps: Sequence[tuple[str, int, Sequence[Mapping[str, Any]]]]
                   ) -> list[Moved | None]:
        """Append audit records to several ledgers' requests in as few script calls as
        the batch size allows (``(ledger key, expected version, records)`` each; the
        ledgers themselves are left as they are). One answer per step, as ``apply``."""
        made = [self._step(key, version, records=records) for key, version, records in steps]
        return self._wait(made)

    def _step(self, ledger_key: str, expected_version: int, *,
              ledger: Mapping[str, str] | None = None,
              records: Sequence[Mapping[str, Any]] = (),
              event: Mapping[str, Any] | None = None,
              dead_letter: DeadLetter | None = None,
              ledger_ttl: int | None = None,
              confirmation: Confirmation | None = None) -> _Step:
        ttl = self.ledger_ttl if ledger_ttl is None else ledger_ttl
        # A finished request leaves the intake index in the same step (one ZREM, one
        # HDEL): the index holds requests in flight only, and nothing else removes them.
        done = ledger is not None and ledger.get("phase") == Phase.DONE
        forget = (keys.request_id_of_ledger(ledger_key) or "") if done else ""
        if confirmation is not None and not forget:
            raise ValueError("a confirmation goes with the step that ends a request")
        return _Step(ledger_key, expected_version, [
            json.dumps(ledger) if ledger is not None else "",
            canonical_json(event) if event is not None else "",
            canonical_json(dead_letter.entry) if dead_letter else "",
            dead_letter.entry_id if dead_letter else "",
            str(ttl),
            forget,
            confirmation.entry if confirmation else "",
            f"{confirmation.due:.3f}" if confirmation else "",
        ], [audit.prepare(record) for record in records])

    def _wait(self, steps: list[_Step]) -> list[Moved | None]:
        if not steps:
            return []
        with self._queue_lock:
            self._queue.extend(steps)
            if not self._leading:
                self._leading = True
                steps[0].wake.set()  # the journal was free: this thread leads
        for step in steps:
            self._until_done(step)
        for step in steps:
            if step.error is not None:
                raise step.error
        return [step.result for step in steps]

    def _until_done(self, step: _Step) -> None:
        while True:
            woken = step.wake.wait(_SAFETY_WAIT_SECONDS)
            if step.done:  # finish() sets done before it wakes
                return
            if woken:
                step.wake.clear()  # handed the lead: only this thread clears it, before leading
            else:
                with self._queue_lock:
                    if step.done or self._leading:
                        continue
                    self._leading = True  # nobody leads while our step waits: take it
            self._lead(step)

    def _lead(self, own: _Step) -> None:
        # Until our own step is written, then hand over: a thread that kept writing for
        # everyone would starve its own task (and could outlive its lease).
        try:
            while not own.done:
                with self._queue_lock:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                if not batch:
                    return  # cannot happen: our own step is queued until we write it
                try:
                    self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - handed to each waiting thread
                    for step in batch:
                        if not step.done:
                            step.finish(error=exc)
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].wake.set()  # the oldest waiting step's thread leads next
                else:
                    self._leading = False

    def _commit(self, batch: list[_Step]) -> None:
        while batch:
            args = [self._head, str(self.results_maxlen), str(int(time.time() * 1000)),
                    str(len(batch))]
            head = self._head
            for step in batch:
                texts, head = audit.link(step.records, head)
                args += [str(step.expected_version), *step.fixed, str(len(texts)), head,
                         *texts]
            reply = self._script(keys=[*_FIXED_KEYS, *(s.ledger_key for s in batch)],
                                 args=args)
            if reply[0] == 1:
                _APPLIED.inc()
                self._head = head
                for step in batch:
                    step.finish()
                return
            if reply[0] == 0:  # another process appended first: link again on its head
                _HEAD_MOVED.inc()
                self._head = str(reply[1])
                continue
            _LEDGER_MOVED.inc()
            moved_at, version, self._head = int(reply[1]) - 1, int(reply[2]), str(reply[3])
            for step in batch[:moved_at]:
                step.finish()
            batch[moved_at].finish(Moved(version))
            batch = batch[moved_at + 1:]
