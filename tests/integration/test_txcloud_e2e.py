"""TXCloud end to end: real Redis, a real worker process, the simulator over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process

PROVIDER = "txcloud"
#: Personal data the simulator puts in every TXCloud verification (``extracted_data``).
PII = ("El Amrani", "Mohammed", "AE123456", "1990-04-12", "MAREL<AMRANI")


def cancel_path(reference: str) -> str:
    return f"/txcloud/v1/identity/verifications/{reference}/cancel"


def assert_documented_call(stack: Stack, call: dict[str, Any], reference: str) -> None:
    """POST {base}/identity/verifications/{id}/cancel, no body, the bearer API key."""
    assert call["method"] == "POST"
    assert call["path"] == cancel_path(reference)
    assert call["headers"]["authorization"] == (
        f"Bearer {stack.env['IDVCANCEL_TXCLOUD_API_KEY']}")
    assert call["body"] is None


def assert_no_pii(stack: Stack) -> None:
    """No personal data in result events, audit records, dead letters or worker logs."""
    stored = {
        "results": json.dumps(stack.events()),
        "audit": json.dumps(stack.audit()),
        "dead letters": json.dumps(stack.redis.hgetall("idvcancel:dlq")),
        "worker logs": "".join(proc.log_text() for proc in stack.workers),
    }
    leaks = {where: [p for p in PII if p in text] for where, text in stored.items()}
    assert not any(leaks.values()), leaks


def test_pending_verification_is_cancelled(stack: Stack) -> None:
    # Given a pending verification
    request = stack.request(provider=PROVIDER)
    seed(stack, PROVIDER, request["reference"], "pending")
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it ends cancelled after one call carrying the documented request
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 1
    assert event["http_status"] == 200 and event["provider_status"] == "cancelled"
    assert event["error"] is None and event["fee_refunded"] is None
    (call,) = stack.provider_calls(PROVIDER, request["reference"])
    assert_documented_call(stack, call, request["reference"])
    assert call["status"] == 200 and call["effective"] is True
    assert stack.sim_client.status(PROVIDER, request["reference"]) == "cancelled"
    # And the PII the 200 carried is nowhere in what we stored or logged
    assert_no_pii(stack)


@pytest.mark.parametrize("status", [
    "verified", "rejected", "review", "expired", "error",  # API reference enum
    "failed", "cancelled", "manual_review",  # concepts page enum
])
def test_verification_no_longer_pending_is_not_cancellable(stack: Stack, status: str) -> None:
    # Given a verification past pending
    request = stack.request(provider=PROVIDER)
    seed(stack, PROVIDER, request["reference"], status)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then TXCloud's 400 ends it not_cancellable, with the blocking status and its code
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_cancellable" and event["http_status"] == 400
    assert event["attempts"] == 1 and event["provider_status"] == status
    assert event["error"]["code"] == "verification_not_cancellable"
    assert event["error"]["message"] == (  # ours: TXCloud's own text is not kept
        "the provider will not cancel or delete the session in its current state (HTTP 400)")
    (call,) = stack.provider_calls(PROVIDER, request["reference"])
    assert_documented_call(stack, call, request["reference"])
    assert stack.sim_client.status(PROVIDER, request["reference"]) == status


def test_unknown_verification_is_not_found(stack: Stack) -> None:
    # Given a reference TXCloud does not know
    request = stack.request(provider=PROVIDER)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is not_found after one call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_found" and event["http_status"] == 404
    assert event["attempts"] == 1 and event["error"]["code"] == "resource_not_found"
    assert len(stack.provider_calls(PROVIDER, request["reference"])) == 1


def test_refused_api_key_is_unauthorized_and_dead_lettered(stack: Stack) -> None:
    # Given TXCloud refuses the API key
    request = stack.request(provider=PROVIDER)
    seed(stack, PROVIDER, request["reference"], "pending")
    stack.sim_client.set_faults(PROVIDER, fail_next=[401])
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is unauthorized at once (no retry), with TXCloud's error code, dead-lettered
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] == 401
    assert event["attempts"] == 1 and event["error"]["code"] == "invalid_api_key"
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    assert len(stack.provider_calls(PROVIDER, request["reference"])) == 1
    assert stack.sim_client.status(PROVIDER, request["reference"]) == "pending"


def test_delete_has_no_api_and_is_rejected_without_a_call(stack: Stack) -> None:
    # Given a delete request for a pending verification
    request = stack.request(provider=PROVIDER, action="delete")
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
    assert stack.sim_client.status(PROVIDER, request["reference"]) == "pending"


def test_rate_limit_is_honoured_then_cancelled(stack: Stack) -> None:
    # Given TXCloud answers one 429 asking us to wait a second
    request = stack.request(provider=PROVIDER)
    seed(stack, PROVIDER, request["reference"], "pending")
    stack.sim_client.set_faults(PROVIDER, fail_next=[429], retry_after=1)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it is cancelled on the second attempt, not before the second was up
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 2
    assert event["http_status"] == 200
    first, second = stack.provider_calls(PROVIDER, request["reference"])
    assert first["status"] == 429 and second["status"] == 200
    assert_documented_call(stack, second, request["reference"])
    assert second["time"] - first["time"] >= 1.0
    records = stack.audit(request["request_id"])
    (retry,) = [r for r in records if r["step"] == "retry_scheduled"]
    assert retry["error"] == "rate_limit_exceeded" and retry["delay_s"] >= 1.0


def test_outage_exhausts_the_budget_and_fails(stack: Stack) -> None:
    # Given TXCloud is down
    request = stack.request(provider=PROVIDER)
    seed(stack, PROVIDER, request["reference"], "pending")
    stack.sim_client.set_faults(PROVIDER, down=True)
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it fails after the stack's whole budget (4 attempts), dead-lettered
    event = stack.result(request["request_id"])
    assert event["outcome"] == "failed" and event["attempts"] == 4
    assert event["http_status"] == 503
    assert event["error"]["code"] == "internal_error"  # TXCloud's own code for a 5xx
    assert event["error"]["message"].startswith("gave up after 4 attempts")
    calls = stack.provider_calls(PROVIDER, request["reference"])
    assert len(calls) == 4 and all(c["status"] == 503 for c in calls)
    entry = json.loads(stack.redis.hget("idvcancel:dlq", request["request_id"]) or "{}")
    assert entry["outcome"] == "failed"
    assert [r["step"] for r in stack.audit(request["request_id"])][-1] == "dead_lettered"


def test_no_pii_anywhere_across_every_outcome(stack: Stack) -> None:
    # Given one request per outcome, including several 200s whose bodies carry PII
    cases = {
        "cancelled": ("pending", {}),
        "not_cancellable": ("verified", {}),
        "unauthorized": ("pending", {"stuck_reference": 401}),
        "failed": ("pending", {"stuck_reference": 503}),
    }
    requests = {}
    for outcome, (status, fault) in cases.items():
        request = stack.request(provider=PROVIDER)
        seed(stack, PROVIDER, request["reference"], status)
        if fault:
            stack.sim_client.script_reference(
                PROVIDER, request["reference"], [fault["stuck_reference"]], sticky=True)
        requests[outcome] = request
    # When they are all submitted
    for request in requests.values():
        stack.producer.submit(request)
    # Then each ends as expected
    results = stack.results([r["request_id"] for r in requests.values()])
    for outcome, request in requests.items():
        assert results[request["request_id"]]["outcome"] == outcome
    # And no PII reached results, audit, dead letters or logs
    assert stack.redis.hlen("idvcancel:dlq") == 2
    assert_no_pii(stack)
