"""The wire contract: what a valid request is, and what is refused and why."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from worker.contract import CancelRequest, Outcome, json_schemas
from worker.delivery.intake import parse

VALID = {
    "request_id": "r-1",
    "provider": "idpass",
    "action": "cancel",
    "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
    "requested_by": "onboarding",
}


def test_valid_request_gets_defaults() -> None:
    # Given the minimal valid request / When validated
    request = CancelRequest.model_validate(VALID)
    # Then source defaults to api and options to empty
    assert request.source == "api"
    assert request.options == {}
    assert request.reason is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": 42}, "request_id"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"request_id": ""}, "request_id"),
        ({"provider": "acme"}, "provider"),
        ({"action": "pause"}, "action"),
        ({"source": "cron"}, "source"),
        ({"unknown": 1}, "unknown"),
        ({"options": "scan"}, "options"),
        ({"requested_by": None}, "requested_by"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], field: str) -> None:
    # Given a request with one bad field / When validated / Then the error names it
    with pytest.raises(ValidationError) as info:
        CancelRequest.model_validate({**VALID, **change})
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def test_missing_required_field_is_refused() -> None:
    without = {k: v for k, v in VALID.items() if k != "reference"}
    with pytest.raises(ValidationError, match="reference"):
        CancelRequest.model_validate(without)


def test_fingerprint_equal_for_equal_requests_and_differs_otherwise() -> None:
    a = CancelRequest.model_validate(VALID)
    b = CancelRequest.model_validate(dict(reversed(list(VALID.items()))))
    c = CancelRequest.model_validate({**VALID, "reason": "superseded"})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_schema_lists_every_outcome_and_the_task() -> None:
    schemas = json_schemas()
    assert schemas["task"]["name"] == "idvcancel.process"
    assert schemas["task"]["queue"] == "idvcancel"
    assert set(schemas["outcomes"]) == {o.value for o in Outcome} == {
        "cancelled", "deleted", "not_cancellable", "not_found", "rejected", "unauthorized",
        "failed",
    }
    assert "request_id" in schemas["request"]["required"]
    json.dumps(schemas)  # serialisable as it is printed


@pytest.mark.parametrize(
    ("args", "kwargs", "code"),
    [
        ((), {}, "invalid_message"),
        ((VALID, VALID), {}, "invalid_message"),
        ((), {"request": VALID}, "invalid_message"),
        (([1, 2],), {}, "invalid_message"),
        (("not json",), {}, "invalid_message"),
        (({**VALID, "provider": 7},), {}, "invalid_request"),
    ],
)
def test_intake_explains_malformed_messages(
    args: tuple[object, ...], kwargs: dict[str, object], code: str
) -> None:
    # Given a delivery with the wrong shape / When parsed
    message = parse(args, kwargs, "task-1")
    # Then it carries a specific error and no request
    assert message.request is None
    assert message.error is not None and message.error[0] == code


def test_intake_keys_by_request_id_or_by_task_id() -> None:
    readable = parse(({**VALID, "provider": 7},), {}, "task-1")
    unreadable = parse(({"request_id": 7},), {}, "task-2")
    assert readable.ledger_key == "idvcancel:req:r-1"
    assert unreadable.ledger_key == "idvcancel:msg:task-2"
    assert unreadable.request_id is None


def test_intake_accepts_a_json_encoded_request() -> None:
    message = parse((json.dumps(VALID),), {}, "task-1")
    assert message.request is not None and message.request.request_id == "r-1"
