"""OneSpan end to end: real Redis, a real worker process, the simulator over HTTP."""

from __future__ import annotations

import uuid

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process

ERASE_PATH = "/onespan/api/transactions/mark-for-erasure"


def reference() -> str:
    return str(uuid.uuid4())


def bearer(stack: Stack) -> str:
    return f"Bearer {stack.env['IDVCANCEL_ONESPAN_TOKEN']}"


# -- cancel ------------------------------------------------------------------------------
def test_cancel_of_a_new_transaction_is_cancelled(stack: Stack) -> None:
    # Given a transaction that is still new
    request = stack.request(provider="onespan", reference=reference())
    seed(stack, "onespan", request["reference"], "new")
    # When a cancel is submitted
    stack.producer.submit(request)
    # Then it ends cancelled after one call carrying the documented request
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["http_status"] == 200
    assert event["provider_status"] == "cancelled" and event["attempts"] == 1
    (call,) = stack.provider_calls("onespan", request["reference"])
    assert call["method"] == "PUT"
    assert call["path"] == f"/onespan/api/transaction/{request['reference']}/event"
    assert call["headers"]["authorization"] == bearer(stack)
    assert call["headers"]["accept"] == "application/json"
    assert call["body"] == {"trigger": "transaction_cancelled"}
    assert stack.sim_client.status("onespan", request["reference"]) == "cancelled"


def test_cancel_of_a_completed_transaction_is_not_cancellable(stack: Stack) -> None:
    request = stack.request(provider="onespan", reference=reference())
    seed(stack, "onespan", request["reference"], "completed")
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_cancellable" and event["http_status"] == 400
    assert event["provider_status"] == "completed" and event["attempts"] == 1
    assert stack.sim_client.status("onespan", request["reference"]) == "completed"


def test_cancel_of_an_unknown_transaction_is_not_found(stack: Stack) -> None:
    request = stack.request(provider="onespan", reference=reference())
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_found" and event["http_status"] == 404


def test_refused_token_is_unauthorized_and_dead_lettered(stack: Stack) -> None:
    request = stack.request(provider="onespan", reference=reference())
    seed(stack, "onespan", request["reference"], "workflow_in_progress")
    stack.sim_client.set_faults("onespan", fail_next=[401])
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] == 401
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    assert stack.sim_client.status("onespan", request["reference"]) == "workflow_in_progress"


# -- delete (mark for erasure) -------------------------------------------------------------
def test_delete_marks_for_erasure_with_tenant_and_body(stack: Stack) -> None:
    # Given a completed transaction
    request = stack.request(provider="onespan", action="delete", reference=reference())
    seed(stack, "onespan", request["reference"], "completed")
    # When a delete without options is submitted
    stack.producer.submit(request)
    # Then it ends deleted: one erasure call with X-Tenant, grace period 0 and our id
    event = stack.result(request["request_id"])
    assert event["outcome"] == "deleted" and event["http_status"] == 200
    assert event["provider_status"] == "marked_for_erasure" and event["attempts"] == 1
    (call,) = stack.provider_calls("onespan", request["reference"])
    assert call["method"] == "POST" and call["path"] == ERASE_PATH
    assert call["headers"]["authorization"] == bearer(stack)
    assert call["headers"]["x-tenant"] == stack.env["IDVCANCEL_ONESPAN_TENANT"]
    assert call["body"] == {"grace_period": 0, "transaction_ids": [request["reference"]]}
    assert stack.sim_client.status("onespan", request["reference"]) == "marked_for_erasure"


def test_grace_period_is_passed_through(stack: Stack) -> None:
    request = stack.request(provider="onespan", action="delete", reference=reference(),
                            options={"grace_period": 14})
    seed(stack, "onespan", request["reference"], "expired")
    stack.producer.submit(request)
    assert stack.result(request["request_id"])["outcome"] == "deleted"
    (call,) = stack.provider_calls("onespan", request["reference"])
    assert call["body"] == {"grace_period": 14, "transaction_ids": [request["reference"]]}
    session = stack.sim_client.session("onespan", request["reference"])
    assert session is not None and session["metadata"]["grace_period"] == 14


def test_delete_of_an_unknown_transaction_is_not_found(stack: Stack) -> None:
    request = stack.request(provider="onespan", action="delete", reference=reference())
    stack.producer.submit(request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "not_found" and event["attempts"] == 1
    assert event["error"]["message"] == "the provider does not know this reference (HTTP 200)"


def test_delete_of_an_already_marked_transaction_is_deleted(stack: Stack) -> None:
    # Given a transaction an earlier request already marked for erasure
    request = stack.request(provider="onespan", action="delete", reference=reference())
    seed(stack, "onespan", request["reference"], "marked_for_erasure")
    stack.producer.submit(request)
    # Then the repeat is deleted too: the data is going either way
    event = stack.result(request["request_id"])
    assert event["outcome"] == "deleted"
    assert event["provider_status"] == "marked_for_erasure"


def test_two_deletes_get_their_own_outcomes(stack: Stack) -> None:
    # Given one transaction that exists and one that does not
    present = stack.request(provider="onespan", action="delete", reference=reference())
    absent = stack.request(provider="onespan", action="delete", reference=reference())
    seed(stack, "onespan", present["reference"], "cancelled")
    # When both deletes are submitted
    stack.producer.submit(present)
    stack.producer.submit(absent)
    # Then each gets its own outcome, its id sent in one erasure call (the two may share
    # one: deletes arriving together are batched)
    events = stack.results([present["request_id"], absent["request_id"]])
    assert events[present["request_id"]]["outcome"] == "deleted"
    assert events[absent["request_id"]]["outcome"] == "not_found"
    for request in (present, absent):
        (call,) = stack.provider_calls("onespan", request["reference"])
        assert request["reference"] in call["body"]["transaction_ids"]
    assert stack.sim_client.status("onespan", present["reference"]) == "marked_for_erasure"


def test_invalid_grace_period_is_rejected_without_a_call(stack: Stack) -> None:
    request = stack.request(provider="onespan", action="delete", reference=reference(),
                            options={"grace_period": -3})
    seed(stack, "onespan", request["reference"], "completed")
    # Published raw, past the producer (which refuses it): the worker's own check
    send_process(stack.broker_url, request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "invalid_options"
    assert "options.grace_period" in event["error"]["message"]
    assert stack.provider_calls("onespan", request["reference"]) == []


def test_worker_without_tenant_cannot_delete_but_can_cancel(stack: Stack) -> None:
    # Given the only worker running has no IDVCANCEL_ONESPAN_TENANT
    stack.workers[0].stop()
    stack.start_worker(IDVCANCEL_ONESPAN_TENANT="")
    delete = stack.request(provider="onespan", action="delete", reference=reference())
    cancel = stack.request(provider="onespan", reference=reference())
    seed(stack, "onespan", delete["reference"], "completed")
    seed(stack, "onespan", cancel["reference"], "new")
    # When a delete and a cancel are submitted
    stack.producer.submit(delete)
    stack.producer.submit(cancel)
    # Then the delete is unauthorized naming the setting, without a call
    events = stack.results([delete["request_id"], cancel["request_id"]])
    assert events[delete["request_id"]]["outcome"] == "unauthorized"
    assert "IDVCANCEL_ONESPAN_TENANT" in events[delete["request_id"]]["error"]["message"]
    assert stack.provider_calls("onespan", delete["reference"]) == []
    # And the cancel, which needs no tenant, still works
    assert events[cancel["request_id"]]["outcome"] == "cancelled"


# -- batched deletes -------------------------------------------------------------------------
def test_deletes_arriving_together_share_erasure_calls(stack: Stack) -> None:
    # Given 40 OneSpan deletes: 25 for completed transactions, 15 for unknown ones
    requests = [stack.request(provider="onespan", action="delete", reference=reference())
                for _ in range(40)]
    present, absent = requests[:25], requests[25:]
    stack.sim_client.seed("onespan", [{"reference": r["reference"], "status": "completed"}
                                      for r in present])
    # When they are all submitted at once
    stack.producer.submit_many(requests)
    # Then each ends with its own outcome, after one call of its own share
    events = stack.results([r["request_id"] for r in requests])
    for request in present:
        event = events[request["request_id"]]
        assert event["outcome"] == "deleted" and event["attempts"] == 1
        assert event["provider_status"] == "marked_for_erasure"
        assert stack.sim_client.status("onespan", request["reference"]) == "marked_for_erasure"
    for request in absent:
        event = events[request["request_id"]]
        assert event["outcome"] == "not_found" and event["attempts"] == 1
        assert event["error"]["message"] == "the provider does not know this reference (HTTP 200)"
    # And the simulator got far fewer mark-for-erasure calls than requests, each with at
    # most 500 ids, together naming every transaction exactly once
    erasures = [c for c in stack.sim_client.calls("onespan") if c["path"] == ERASE_PATH]
    bodies = {c["request_id"]: c["body"] for c in erasures}
    assert len(bodies) <= len(requests) // 4, f"{len(bodies)} calls for {len(requests)} deletes"
    assert all(1 <= len(body["transaction_ids"]) <= 500 for body in bodies.values())
    sent = sorted(tid for body in bodies.values() for tid in body["transaction_ids"])
    assert sent == sorted(r["reference"] for r in requests)
    assert all(body["grace_period"] == 0 for body in bodies.values())
    stack.assert_chain_intact()
