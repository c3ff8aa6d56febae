"""ID Pass end to end: real Redis, a real worker process, the simulator over HTTP."""

from __future__ import annotations

import json

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process, send_raw


def test_cancel_of_a_new_pass_is_cancelled_with_refund(stack: Stack) -> None:
    # Given a pass that is still new
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it ends cancelled, refunded, after one call carrying the documented request
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["fee_refunded"] is True
    assert event["attempts"] == 1 and event["http_status"] == 200
    assert event["provider_status"] == "cancelled"
    (call,) = stack.provider_calls("idpass", request["reference"])
    assert call["method"] == "POST" and call["path"] == "/idpass-api/idpass/cancel"
    assert call["headers"]["authorization"] == f"Bearer {stack.env['IDVCANCEL_IDPASS_TOKEN']}"
    assert call["body"] == {"id": request["reference"]}
    assert stack.sim_client.status("idpass", request["reference"]) == "cancelled"


def test_cancel_after_consent_is_cancelled_without_refund(stack: Stack) -> None:
    request = stack.request()
    seed(stack, "idpass", request["reference"], "in_progress")
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["fee_refunded"] is False


def test_terminal_pass_is_not_cancellable(stack: Stack) -> None:
    request = stack.request()
    seed(stack, "idpass", request["reference"], "complete")
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_cancellable" and event["http_status"] == 400
    assert event["provider_status"] == "complete" and event["attempts"] == 1


def test_unknown_pass_is_not_found(stack: Stack) -> None:
    request = stack.request()
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_found" and event["http_status"] == 404


def test_refused_credentials_are_unauthorized_and_dead_lettered(stack: Stack) -> None:
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", fail_next=[401])
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] == 401
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])


def test_delete_has_no_api_and_is_rejected_without_a_call(stack: Stack) -> None:
    request = stack.request(action="delete")
    seed(stack, "idpass", request["reference"], "new")
    # Published raw, past the producer (which refuses it): the worker's own check
    send_process(stack.broker_url, request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected"
    assert event["error"]["code"] == "action_not_supported"
    assert "no API to delete" in event["error"]["message"]
    assert stack.provider_calls("idpass", request["reference"]) == []


def test_burst_of_503_is_retried_then_cancelled(stack: Stack) -> None:
    # Given the provider answers 503 three times before recovering
    request = stack.request()
    seed(stack, "idpass", request["reference"], "opened")
    stack.sim_client.set_faults("idpass", fail_next=[503, 503, 503])
    # When the cancel is submitted
    stack.producer.submit(request)
    # Then it is cancelled on the fourth attempt, each attempt audited
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 4
    assert len(stack.provider_calls("idpass", request["reference"])) == 4
    steps = [r["step"] for r in stack.audit(request["request_id"])]
    assert steps.count("attempt") == 4 and steps.count("retry_scheduled") == 3
    retries = [r for r in stack.audit(request["request_id"]) if r["step"] == "retry_scheduled"]
    assert all(0 <= r["delay_s"] <= 0.3 for r in retries)


def test_exhausted_budget_fails_and_keeps_a_replayable_dead_letter(stack: Stack) -> None:
    request = stack.request(reason="superseded by a new pass")
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", down=True)
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "failed" and event["attempts"] == 4
    assert event["error"]["code"] == "provider_server_error"
    entry = json.loads(stack.redis.hget("idvcancel:dlq", request["request_id"]) or "{}")
    assert entry["request"] == {**request, "source": "api", "options": {}}
    assert [r["step"] for r in stack.audit(request["request_id"])][-1] == "dead_lettered"


def test_same_request_three_times_calls_the_provider_once(stack: Stack) -> None:
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", latency_ms=300)  # the copies overlap in flight
    for _ in range(3):
        stack.producer.submit(request)
    event = stack.result(request["request_id"], settle=2.0)
    assert event["outcome"] == "cancelled"
    assert len(stack.provider_calls("idpass", request["reference"])) == 1
    steps = [r["step"] for r in stack.audit(request["request_id"])]
    assert steps.count("duplicate") == 2 and steps.count("completed") == 1


def test_conflicting_duplicate_is_rejected(stack: Stack) -> None:
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.producer.submit(request)
    stack.result(request["request_id"])
    # When the same id comes back with another reference
    stack.producer.submit({**request, "reference": "0f0f0f0f-0000-4000-8000-000000000000"})
    # Then that one is rejected as a conflict and nothing else is called
    (conflict,) = stack.wait_events(
        lambda e: e["request_id"] == request["request_id"] and e["outcome"] == "rejected")
    assert conflict["error"]["code"] == "request_id_conflict"
    assert stack.provider_calls("idpass", "0f0f0f0f-0000-4000-8000-000000000000") == []
    assert len(stack.provider_calls("idpass", request["reference"])) == 1


def test_malformed_messages_are_rejected_and_the_worker_goes_on(stack: Stack) -> None:
    # Given a valid request queued behind malformed ones
    valid = stack.request()
    seed(stack, "idpass", valid["reference"], "new")
    bad_fields = {**stack.request(), "provider": "acme", "surprise": 1}
    send_process(stack.broker_url, bad_fields)
    send_process(stack.broker_url, None, args=[1, 2, 3])
    send_process(stack.broker_url, None, args=[], kwargs={"request": valid})
    send_raw(stack.broker_url, b"\xff\xfe not json at all")
    stack.producer.submit(valid)
    # Then the valid one completes and the readable malformed one is rejected, specifically
    assert stack.result(valid["request_id"])["outcome"] == "cancelled"
    rejected = stack.result(bad_fields["request_id"])
    assert rejected["outcome"] == "rejected" and rejected["attempts"] == 0
    assert "provider" in rejected["error"]["message"]
    assert "surprise" in rejected["error"]["message"]
    # And the id-less ones (wrong arguments, an undecodable body) are rejected too,
    # each once, with a dead letter each
    anonymous = stack.wait_events(lambda e: e["request_id"] is None, count=3)
    assert all(e["outcome"] == "rejected" for e in anonymous)
    codes = sorted(e["error"]["code"] for e in anonymous)
    assert codes == ["invalid_message", "invalid_message", "undecodable_message"]
    assert stack.redis.hlen("idvcancel:dlq") == 3
    assert stack.audit(bad_fields["request_id"])[-1]["step"] == "rejected"
    stack.assert_chain_intact()
