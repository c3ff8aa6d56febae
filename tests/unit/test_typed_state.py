"""Issue 8: one hasher for message ids, the ledger's typed state, the audit step names.

The ids and the ledger layout persist in Redis, so these pin them to what was written
before: a redelivered copy of an old message must still be answered once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from worker.contract import CancelRequest, canonical_json, message_digest
from worker.delivery import intake
from worker.delivery.records import AuditStep

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
