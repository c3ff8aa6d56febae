"""gu1 end to end: real Redis, a real worker process, the simulator over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process

PROVIDER = "gu1"
REASON = "customer asked to stop the verification"


def assert_documented_call(stack: Stack, call: dict[str, Any], reference: str,
                           reason: str = REASON) -> None:
    """DELETE {base}/api/kyc/validations/{id}/cancel, JSON {"reason"}, the bearer API key."""
    assert call["method"] == "DELETE"
    assert call["path"] == f"/gu1/api/kyc/validations/{reference}/cancel"
    assert call["headers"]["authorization"] == f"Bearer {stack.env['IDVCANCEL_GU1_API_KEY']}"
    assert call["headers"]["content-type"] == "application/json"
    assert call["body"] == {"reason": reason}


@pytest.mark.parametrize("status", ["pending", "in_progress", "in_review"])
def test_open_validation_is_cancelled_with_the_trimmed_reason(stack: Stack, status: str) -> None:
    # Given an open validation, and a reason padded with spaces
    request = stack.request(provider=PROVIDER, reason=f"  {REASON}  ")
    seed(stack, PROVIDER, request["reference"], status)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is cancelled after one DELETE whose JSON body carries the trimmed reason
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 1
    assert event["http_status"] == 200 and event["provider_status"] == "cancelled"
    assert event["error"] is None
    (call,) = stack.provider_calls(PROVIDER, request["reference"])
    assert_documented_call(stack, call, request["reference"])
    assert call["status"] == 200 and call["effective"] is True
    # And gu1 kept the reason with the validation
    session = stack.sim_client.session(PROVIDER, request["reference"])
    assert session is not None and session["status"] == "cancelled"
    assert session["metadata"]["cancellationReason"] == REASON


@pytest.mark.parametrize("status", ["approved", "rejected", "expired", "abandoned", "cancelled"])
def test_closed_validation_is_not_cancellable(stack: Stack, status: str) -> None:
    # Given a validation in a final status
    request = stack.request(provider=PROVIDER, reason=REASON)
    seed(stack, PROVIDER, request["reference"], status)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then gu1's 400 "invalid status" ends it not_cancellable, naming the status
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_cancellable" and event["http_status"] == 400
    assert event["attempts"] == 1 and event["provider_status"] == status
    assert event["error"]["message"] == (  # ours: gu1's own text is not kept
        "the provider will not cancel or delete the session in its current state (HTTP 400)")
    (call,) = stack.provider_calls(PROVIDER, request["reference"])
    assert_documented_call(stack, call, request["reference"])
    assert stack.sim_client.status(PROVIDER, request["reference"]) == status


def test_unknown_validation_is_not_found(stack: Stack) -> None:
    # Given a validation id gu1 does not know
    request = stack.request(provider=PROVIDER, reason=REASON)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is not_found after one call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_found" and event["http_status"] == 404
    assert event["attempts"] == 1
    (call,) = stack.provider_calls(PROVIDER, request["reference"])
    assert_documented_call(stack, call, request["reference"])


def test_refused_api_key_is_unauthorized_and_dead_lettered(stack: Stack) -> None:
    # Given gu1 refuses the API key
    request = stack.request(provider=PROVIDER, reason=REASON)
    seed(stack, PROVIDER, request["reference"], "pending")
    stack.sim_client.set_faults(PROVIDER, fail_next=[401])
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is unauthorized at once (no retry) and dead-lettered for an operator
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] == 401
    assert event["attempts"] == 1
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    assert len(stack.provider_calls(PROVIDER, request["reference"])) == 1
    assert stack.sim_client.status(PROVIDER, request["reference"]) == "pending"


@pytest.mark.parametrize("reason", [None, "abcd", "  abc  "])
def test_short_or_missing_reason_is_rejected_without_a_call(
    stack: Stack, reason: str | None
) -> None:
    # Given a reason under 5 characters once trimmed (or none)
    fields = {} if reason is None else {"reason": reason}
    request = stack.request(provider=PROVIDER, **fields)
    seed(stack, PROVIDER, request["reference"], "pending")
    # When it is published raw, past the producer (which refuses it): the worker's
    # own check
    send_process(stack.broker_url, request)
    # Then it is rejected before any call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "reason_required"
    assert stack.provider_calls(PROVIDER, request["reference"]) == []
    assert stack.sim_client.status(PROVIDER, request["reference"]) == "pending"


def test_delete_has_no_api_and_is_rejected_without_a_call(stack: Stack) -> None:
    # Given a delete request
    request = stack.request(provider=PROVIDER, action="delete", reason=REASON)
    seed(stack, PROVIDER, request["reference"], "pending")
    # When it is published raw, past the producer (which refuses it): the worker's
    # own check
    send_process(stack.broker_url, request)
    # Then it is rejected before any call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "action_not_supported"
    assert "no API to delete" in event["error"]["message"]
    assert stack.provider_calls(PROVIDER, request["reference"]) == []


def test_rate_limit_is_honoured_then_cancelled(stack: Stack) -> None:
    # Given gu1 answers one 429 with Retry-After: 1
    request = stack.request(provider=PROVIDER, reason=REASON)
    seed(stack, PROVIDER, request["reference"], "in_progress")
    stack.sim_client.set_faults(PROVIDER, fail_next=[429], retry_after=1)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is cancelled on the second attempt, not before the second was up
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 2
    first, second = stack.provider_calls(PROVIDER, request["reference"])
    assert first["status"] == 429 and second["status"] == 200
    assert_documented_call(stack, first, request["reference"])
    assert_documented_call(stack, second, request["reference"])
    assert second["time"] - first["time"] >= 1.0
    (retry,) = [r for r in stack.audit(request["request_id"]) if r["step"] == "retry_scheduled"]
    assert retry["error"] == "rate_limited" and retry["delay_s"] >= 1.0


def test_outage_exhausts_the_budget_and_fails(stack: Stack) -> None:
    # Given gu1 is down
    request = stack.request(provider=PROVIDER, reason=REASON)
    seed(stack, PROVIDER, request["reference"], "pending")
    stack.sim_client.set_faults(PROVIDER, down=True)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it fails after the stack's whole budget (4 attempts), dead-lettered
    event = stack.result(request["request_id"])
    assert event["outcome"] == "failed" and event["attempts"] == 4
    assert event["http_status"] == 503 and event["error"]["code"] == "provider_server_error"
    calls = stack.provider_calls(PROVIDER, request["reference"])
    assert len(calls) == 4 and all(c["body"] == {"reason": REASON} for c in calls)
    entry = json.loads(stack.redis.hget("idvcancel:dlq", request["request_id"]) or "{}")
    assert entry["outcome"] == "failed" and entry["request"]["reason"] == REASON
    assert [r["step"] for r in stack.audit(request["request_id"])][-1] == "dead_lettered"
