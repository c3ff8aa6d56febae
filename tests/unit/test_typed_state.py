"""Issue 8: one hasher for message ids, the ledger's typed state, the audit step names.

The ids and the ledger layout persist in Redis, so these pin them to what was written
before: a redelivered copy of an old message must still be answered once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from worker.contract import CancelRequest, Outcome, canonical_json, message_digest
from worker.delivery import intake, records
from worker.delivery.records import AuditStep
from worker.journal.ledger import LedgerState, Phase

REQUEST = {"request_id": "r-1", "provider": "idpass", "action": "cancel",
           "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95", "requested_by": "tests"}

# -- message_digest: the ids the four hashers produced before stay the same -----------


@pytest.mark.parametrize("args, kwargs", [
    ([REQUEST], {}), ([1, 2, 3], {}), ([], {"request": REQUEST}), (["not json"], {}),
    ([{"request_id": "x", "reason": "bad \ud800 value"}], {}),
])
def test_message_fingerprints_are_the_ones_ledgers_hold(args: list[Any],
                                                         kwargs: dict[str, Any]) -> None:
    message = intake.parse(args, kwargs, "t-1")
    if message.request is not None:
        before = hashlib.sha256(canonical_json(message.request.model_dump()).encode())
    else:
        value = {"args": args, "kwargs": kwargs}
        try:
            before = hashlib.sha256(canonical_json(value).encode("utf-8"))
        except UnicodeEncodeError:
            before = hashlib.sha256(ascii((args, kwargs)).encode())
    assert message.fingerprint == before.hexdigest()


@pytest.mark.parametrize("raw", [b"\xff\xfe not json", (["a\ud800"], {"k": 1}), "text"])
def test_repr_and_body_digests_are_unchanged(raw: Any) -> None:
    # pipeline.reject_unreadable, tasks.process._task_id and the consumer's raw- ids
    old_repr = hashlib.sha256(repr(raw).encode("utf-8", "replace")).hexdigest()
    assert message_digest(repr(raw)) == old_repr
    body = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
    assert message_digest(raw if isinstance(raw, bytes) else str(raw)) == hashlib.sha256(
        body).hexdigest()


def test_message_digest_never_raises_on_text_utf8_cannot_hold() -> None:
    assert message_digest("a\ud800") == message_digest("a?")
    assert message_digest("abc") == message_digest(b"abc") == hashlib.sha256(
        b"abc").hexdigest()


def test_request_fingerprint_is_the_digest_of_its_canonical_json() -> None:
    request = CancelRequest.model_validate(REQUEST)
    assert request.fingerprint() == hashlib.sha256(
        json.dumps(request.model_dump(), sort_keys=True, separators=(",", ":"),
                   ensure_ascii=False).encode()).hexdigest()


# -- the audit step names -----------------------------------------------------------


def test_audit_step_names_are_the_ones_readers_match_on() -> None:
    assert [s.value for s in AuditStep] == [
        "received", "rejected", "attempt", "retry_scheduled", "recovery", "completed",
        "dead_lettered", "duplicate", "replayed", "resubmitted"]
    assert json.dumps({"step": AuditStep.RETRY_SCHEDULED}) == '{"step": "retry_scheduled"}'


# -- the ledger: one typed state, the Redis layout unchanged --------------------------

#: Ledgers as the worker has always written them (field names, "1"/"" flags, ms times).
WRITTEN = [
    {"v": "1", "created": "1000000.000", "fp": "f" * 64, "phase": "calling", "owner": "w1",
     "lease_until": "1000030.000", "attempts": "0", "recover": ""},
    {"v": "2", "created": "1000000.000", "fp": "f" * 64, "phase": "waiting", "owner": "",
     "lease_until": "0", "not_before": "1000003.500", "attempts": "1", "http_status": "503",
     "provider_status": "", "recover": "1"},
    {"v": "3", "created": "1000000.000", "fp": "f" * 64, "phase": "done", "owner": "",
     "lease_until": "0", "not_before": "1000003.500", "attempts": "2",
     "outcome": "cancelled", "http_status": "200", "provider_status": "cancelled",
     "recover": "", "conflicts": json.dumps(["a" * 64, "b" * 64])},
    {"v": "5", "created": "1000100.250", "fp": "f" * 64, "phase": "waiting", "owner": "",
     "lease_until": "0", "not_before": "0", "attempts": "0", "outcome": "",
     "http_status": "503", "provider_status": "", "recover": "", "replays": "2"},
]


@pytest.mark.parametrize("raw", WRITTEN)
def test_a_ledger_hash_reads_back_and_writes_back_the_same(raw: dict[str, str]) -> None:
    state = LedgerState.from_hash(raw)
    written = state.to_hash()
    assert {k: written[k] for k in raw} == raw
    assert LedgerState.from_hash(written) == state


def test_the_hash_reads_as_typed_state() -> None:
    waiting, done = LedgerState.from_hash(WRITTEN[1]), LedgerState.from_hash(WRITTEN[2])
    assert waiting.phase is Phase.WAITING and waiting.recover is True
    assert waiting.http_status == 503 and waiting.provider_status is None
    assert waiting.not_before == 1000003.5 and waiting.outcome is None
    assert done.phase is Phase.DONE and done.outcome is Outcome.CANCELLED
    assert done.recover is False and done.conflicts == ("a" * 64, "b" * 64)
    assert LedgerState.from_hash(WRITTEN[3]).replays == 2
    assert LedgerState.from_hash({}) == LedgerState()
    assert LedgerState().phase is None and LedgerState().version == 0
    assert [p.value for p in Phase] == ["calling", "waiting", "done"]


def test_claimed_writes_what_a_claim_always_wrote() -> None:
    first = LedgerState.claimed("fp", "w1", 1000030.0, 0, recover=False, created=1000000.0)
    assert first == {"created": "1000000.000", "fp": "fp", "phase": "calling",
                     "owner": "w1", "lease_until": "1000030.000", "attempts": "0",
                     "recover": ""}
    again = LedgerState.claimed("fp", "w2", 1000060.5, 1, recover=True)
    assert again == {"fp": "fp", "phase": "calling", "owner": "w2",
                     "lease_until": "1000060.500", "attempts": "1", "recover": "1"}


def test_waiting_only_raises_the_recover_flag() -> None:
    assert LedgerState.waiting(1, 1000003.5, 503, recover=False) == {
        "phase": "waiting", "attempts": "1", "owner": "", "lease_until": "0",
        "not_before": "1000003.500", "http_status": "503", "provider_status": ""}
    held = LedgerState.waiting(2, 1000009.0, None, recover=True)
    assert held["recover"] == "1" and held["http_status"] == ""


def test_done_clears_the_lease_and_the_flag() -> None:
    assert LedgerState.done("fp", Outcome.NOT_FOUND, 1, 404, None) == {
        "fp": "fp", "phase": "done", "outcome": "not_found", "attempts": "1", "owner": "",
        "lease_until": "0", "http_status": "404", "provider_status": "", "recover": ""}
    assert LedgerState.done("fp", Outcome.REJECTED, 0, None, None)["http_status"] == ""


def test_a_conflict_is_remembered_once_more() -> None:
    state = LedgerState.from_hash(WRITTEN[2])
    fields = state.with_conflict("c" * 64)
    assert fields == {"conflicts": json.dumps(["a" * 64, "b" * 64, "c" * 64])}
    assert LedgerState().with_conflict("c") == {"conflicts": '["c"]'}


def test_reset_for_replay_gives_a_full_budget_and_counts_the_replay() -> None:
    state = LedgerState.from_hash({**WRITTEN[2], "outcome": "failed", "replays": "1"})
    assert state.reset_for_replay(1000100.25) == {
        "phase": "waiting", "not_before": "0", "attempts": "0", "outcome": "", "owner": "",
        "lease_until": "0", "replays": "2", "created": "1000100.250"}


def test_each_transition_reads_back_as_its_phase() -> None:
    steps = [LedgerState.claimed("fp", "w", 5.0, 0, recover=True, created=1.0),
             LedgerState.waiting(1, 9.0, 503, recover=False),
             LedgerState.claimed("fp", "w", 15.0, 1, recover=False),
             LedgerState.done("fp", Outcome.CANCELLED, 2, 200, "cancelled")]
    raw: dict[str, str] = {}
    phases = []
    for fields in steps:
        raw.update(fields)  # what HSET does
        phases.append(LedgerState.from_hash(raw).phase)
    assert phases == [Phase.CALLING, Phase.WAITING, Phase.CALLING, Phase.DONE]
    final = LedgerState.from_hash(raw)
    assert (final.attempts, final.outcome, final.owner, final.lease_until, final.recover,
            final.created) == (2, Outcome.CANCELLED, "", 0.0, False, 1.0)


# -- result events: built as the ResultEvent model ------------------------------------


def test_a_result_event_dumps_to_the_fields_the_stream_always_had() -> None:
    message = intake.parse([REQUEST], {}, "t-1")
    result = records.event(message, Outcome.FAILED, attempts=3, http_status=503,
                           error=("unavailable", "down"))
    dumped = json.loads(canonical_json(result.model_dump(mode="json")))
    assert set(dumped) == {
        "request_id", "provider", "action", "reference", "source", "outcome", "attempts",
        "http_status", "provider_status", "fee_refunded", "error", "occurred_at",
        "requested_by", "task_id", "recovered"}
    assert dumped["outcome"] == "failed" and dumped["source"] == "api"
    assert dumped["error"] == {"code": "unavailable", "message": "down"}
    assert dumped["recovered"] is False and dumped["task_id"] == "t-1"
    entry = records.dead_letter(message, result).entry
    assert entry["error"] == dumped["error"] and entry["outcome"] == "failed"
    assert entry["dead_lettered_at"] == dumped["occurred_at"]


def test_an_unreadable_message_has_an_event_with_no_request_id() -> None:
    message = intake.parse([1, 2], {}, "t-2")
    dumped = records.event(message, Outcome.REJECTED, error=message.error).model_dump(
        mode="json")
    assert dumped["request_id"] is None and dumped["source"] is None
    assert dumped["error"]["code"] == "invalid_message"
