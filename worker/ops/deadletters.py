"""Dead letters: list them, read one, and replay those that carry a request.

The pipeline keeps a dead letter for every request that ended ``failed`` or
``unauthorized`` (a person must act: wait out an outage, fix a credential) and for every
message so malformed that no request id could be read. They live in two keys
(``worker.keys``): the hash ``idvcancel:dlq`` (id → JSON entry with ``request``,
``outcome``, ``error``, ``attempts``, ``http_status``, ``task_id``,
``dead_lettered_at``) and the sorted set ``idvcancel:dlq:index`` (score = ms).

Replaying a request (``replay``) does, in this order (after checking that the producer
would take it: a request that breaks a rule tightened since is ``NotReplayable``, naming
the rule, and nothing changes):

1. Read its ledger. If the phase is ``done`` with a dead-lettered outcome, reset it to
   ``waiting`` (attempts 0, outcome cleared, ``replays`` + 1, ``created`` = now so the
   retry deadline starts again too) and append a ``replayed``
   audit record, in one journal step (compare-and-set on the ledger version; if the
   ledger moved meanwhile, read it again and decide again). If the phase is already
   ``waiting``, an earlier replay was interrupted after its reset: skip the reset.
2. Enqueue the stored request again with the producer.
3. Delete the entry, but only if it is still the one that was read: if the replayed
   request already failed again, the worker has written a fresh entry and it stays.

The pipeline then carries the request out with a full retry budget and publishes a
**new** result event for that ``request_id``: a replayed request has one result event
per run (the first ``failed``/``unauthorized``, then the replay's). That is the one
exception to "one event per request", and it is on purpose: consumers see how it ended.

A replay interrupted at any point can be repeated: after step 1 the ledger is
``waiting`` and the entry still there; after step 2 the request runs once whatever
number of copies are queued (the ledger); an entry left over after the request has
since ended well is cleared without sending anything (``already_done``).

Examples:
    >>> from worker.ops.deadletters import list_entries, replay
    >>> entries = list_entries(client, limit=20)                       # doctest: +SKIP
    >>> replay(client, producer, entries[0]["id"]).status              # doctest: +SKIP
    'replayed'
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis

from worker import keys, scripts
from worker.broker.producer import admit
from worker.contract import CancelRequest, Outcome
from worker.delivery import records
from worker.delivery.records import AuditStep
from worker.errors import EntryNotFound, InvalidRequest, NotReplayable
from worker.journal import ledger
from worker.journal.ledger import Phase
from worker.journal.steps import Journal, Moved

#: Outcomes that leave a dead letter (the pipeline's ``DEAD_LETTERED``).
REPLAYABLE_OUTCOMES = frozenset({Outcome.FAILED.value, Outcome.UNAUTHORIZED.value})



class Submitter(Protocol):
    """What a replay needs from ``worker.broker.producer.Producer``."""

    def submit(self, request: CancelRequest | Mapping[str, Any]) -> str: ...


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did.

    Parameters:
        entry_id: the dead letter's id (the request id for requests).
        status: ``replayed`` (sent again), ``already_done`` (a stale entry of a request
            that has since ended well: cleared, nothing sent) or ``skipped`` (not
            replayable; ``detail`` says why; only from ``replay_all``).
        reset: whether this call reset the ledger (False when an interrupted replay
            had already done it).
        replays: how many times the request has now been replayed.
        detail: a sentence for people.
    """

    entry_id: str
    status: Literal["replayed", "already_done", "skipped"]
    reset: bool = False
    replays: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.entry_id, "status": self.status, "reset": self.reset,
                "replays": self.replays, "detail": self.detail}


def _decode(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return {"unreadable_entry": raw[:256]}
    return entry if isinstance(entry, dict) else {"unreadable_entry": raw[:256]}


def count(client: redis.Redis) -> int:
    """How many dead letters there are."""
    return int(client.hlen(keys.DLQ))


def list_entries(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """Up to ``limit`` dead letters, oldest first (each with its ``id``).

    Examples:
        >>> [e["id"] for e in list_entries(client, limit=2)]           # doctest: +SKIP
        ['r-17', 'task:5b1c...']
    """
    ids: list[str] = client.zrange(keys.DLQ_INDEX, 0, max(limit, 1) - 1)  # type: ignore[assignment]
    if not ids:
        return []
    raws: list[str | None] = client.hmget(keys.DLQ, ids)  # type: ignore[assignment]
    entries = []
    for entry_id, raw in zip(ids, raws, strict=True):
        entry = _decode(raw)
        if entry is not None:  # an index id without an entry: already replayed
            entries.append({"id": entry_id, **entry})
    return entries


def get(client: redis.Redis, entry_id: str) -> dict[str, Any] | None:
    """The dead letter ``entry_id``, or None."""
    entry = _decode(client.hget(keys.DLQ, entry_id))  # type: ignore[arg-type]
    return None if entry is None else {"id": entry_id, **entry}


def _replayed_record(request: Mapping[str, Any], replays: int, previous: Outcome | None
                     ) -> dict[str, Any]:
    """The audit draft of a replay: the replay's number and the outcome it replaces."""
    return records.request_draft(AuditStep.REPLAYED, request, replay=replays,
                                 previous_outcome=previous.value if previous else None)


def _reset_ledger(client: redis.Redis, request: Mapping[str, Any]) -> tuple[str, bool, int]:
    """Step 1: returns (what to do: ``send`` or ``already_done``, reset?, replays)."""
    journal = Journal(client)
    key = keys.request_ledger(str(request["request_id"]))
    while True:
        state = ledger.read(client, key)
        replays = state.replays
        if state.phase == Phase.WAITING:
            return "send", False, replays  # an interrupted replay already reset it
        if state.phase == Phase.CALLING:
            raise NotReplayable(
                f"request {request['request_id']!r} is being carried out right now "
                "(phase calling); wait for its result")
        if state.phase == Phase.DONE and state.outcome not in REPLAYABLE_OUTCOMES:
            return "already_done", False, replays
        # the retry deadline counts from the replay, not the first delivery
        fields = state.reset_for_replay(time.time())
        record = _replayed_record(request, replays + 1, state.outcome)
        # No ledger at all (it expired): nothing to reset, but the replay is audited.
        moved = journal.apply(key, state.version, records=[record],
                              ledger=fields if state.version else None)
        if not isinstance(moved, Moved):
            return "send", bool(state.version), replays + 1


def replay(client: redis.Redis, producer: Submitter, entry_id: str) -> ReplayResult:
    """Send the request of dead letter ``entry_id`` again (see the module docstring).

    Raises ``EntryNotFound`` (no such entry) or ``NotReplayable`` (an unreadable message,
    ids ``task:<task id>``, or a request being carried out right now).

    Examples:
        >>> replay(client, Producer(url), "r-17")                      # doctest: +SKIP
        ReplayResult(entry_id='r-17', status='replayed', reset=True, replays=1, detail='')
    """
    raw: str | None = client.hget(keys.DLQ, entry_id)  # type: ignore[assignment]
    entry = _decode(raw)
    if raw is None or entry is None:
        raise EntryNotFound(entry_id)
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("request_id"), str):
        raise NotReplayable(
            f"dead letter {entry_id!r} holds an unreadable message, not a request: "
            "there is nothing to send again (inspect it with 'idvcancel dlq list')")
    try:  # before the reset: a replay the producer refuses must change nothing
        admit(request)
    except InvalidRequest as exc:
        raise NotReplayable(f"dead letter {entry_id!r} would be refused now: {exc.reason}"
                            ) from exc
    action, reset, replays = _reset_ledger(client, request)
    if action == "send":
        producer.submit(request)
    scripts.script(client, "dlq_delete_if_same")(keys=[keys.DLQ, keys.DLQ_INDEX],
                                            args=[entry_id, raw])
    if action == "already_done":
        return ReplayResult(entry_id, "already_done", replays=replays,
                            detail="the request has since ended; stale entry cleared")
    return ReplayResult(entry_id, "replayed", reset=reset, replays=replays)


def replay_all(client: redis.Redis, producer: Submitter, limit: int = 10_000
               ) -> list[ReplayResult]:
    """Replay every replayable dead letter, oldest first; the others are ``skipped``."""
    results = []
    for entry in list_entries(client, limit):
        try:
            results.append(replay(client, producer, entry["id"]))
        except EntryNotFound:
            continue  # replayed by someone else meanwhile
        except NotReplayable as exc:
            results.append(ReplayResult(entry["id"], "skipped", detail=str(exc)))
    return results
