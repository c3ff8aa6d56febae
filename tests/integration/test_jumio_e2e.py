"""Jumio end to end: real Redis, a real worker process, the simulator over HTTP."""

from __future__ import annotations

import base64
import itertools
import uuid

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process

PRODUCTS = {"scan": "scans", "authentication": "authentications", "document": "documents"}
REGIONS = ("us", "eu", "sgp")


def reference() -> str:
    return str(uuid.uuid4())  # 36 characters, Jumio's maximum


def basic(stack: Stack) -> str:
    pair = f"{stack.env['IDVCANCEL_JUMIO_API_TOKEN']}:{stack.env['IDVCANCEL_JUMIO_API_SECRET']}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def test_delete_is_deleted_with_the_documented_headers(stack: Stack) -> None:
    # Given a finished ID Verification scan in the US (the default product and region)
    request = stack.request(provider="jumio", action="delete", reference=reference())
    seed(stack, "jumio", request["reference"], "DONE", product="scans", region="us")
    # When a delete without options is submitted
    stack.producer.submit(request)
    # Then it ends deleted after one call carrying the documented headers
    event = stack.result(request["request_id"])
    assert event["outcome"] == "deleted" and event["http_status"] == 200
    assert event["attempts"] == 1 and event["error"] is None
    (call,) = stack.provider_calls("jumio", request["reference"])
    assert call["method"] == "DELETE"
    assert call["path"] == f"/jumio/us/api/netverify/v2/scans/{request['reference']}"
    assert call["headers"]["authorization"] == basic(stack)
    assert call["headers"]["user-agent"] == stack.env["IDVCANCEL_JUMIO_USER_AGENT"]
    assert call["headers"]["user-agent"] == "idv-cancel-tests/1.0"
    assert call["headers"]["accept"] == "application/json"
    # And the transaction is gone at the provider
    assert stack.sim_client.status("jumio", request["reference"]) is None


def test_each_product_and_region_reaches_its_own_host(stack: Stack) -> None:
    # Given one pending transaction per product and region, each on its own host
    requests = {}
    for (product, path), region in itertools.product(PRODUCTS.items(), REGIONS):
        request = stack.request(provider="jumio", action="delete", reference=reference(),
                                options={"product": product, "region": region})
        seed(stack, "jumio", request["reference"], "PENDING", product=path, region=region)
        requests[(product, region)] = request
    # When all nine deletes are submitted
    for request in requests.values():
        stack.producer.submit(request)
    # Then each is deleted by one call to its product's host in its region
    events = stack.results([r["request_id"] for r in requests.values()])
    for (product, region), request in requests.items():
        host = f"retrieval-{region}" if product == "document" else region
        assert events[request["request_id"]]["outcome"] == "deleted", (product, region)
        (call,) = stack.provider_calls("jumio", request["reference"])
        assert call["path"] == (
            f"/jumio/{host}/api/netverify/v2/{PRODUCTS[product]}/{request['reference']}")


def test_unknown_transaction_is_not_found(stack: Stack) -> None:
    # Given no such transaction, and one that lives in the EU, not the US
    unknown = stack.request(provider="jumio", action="delete", reference=reference())
    elsewhere = stack.request(provider="jumio", action="delete", reference=reference(),
                              options={"region": "us"})
    seed(stack, "jumio", elsewhere["reference"], "DONE", product="scans", region="eu")
    # When both are submitted
    stack.producer.submit(unknown)
    stack.producer.submit(elsewhere)
    # Then both end not_found after one call, and the EU transaction is untouched
    events = stack.results([unknown["request_id"], elsewhere["request_id"]])
    for event in events.values():
        assert event["outcome"] == "not_found" and event["http_status"] == 404
        assert event["attempts"] == 1
    assert stack.sim_client.status("jumio", elsewhere["reference"]) == "DONE"


def test_refused_headers_are_unauthorized_and_dead_lettered(stack: Stack) -> None:
    # Given Jumio answers 403 (suspicious headers) to the next call
    request = stack.request(provider="jumio", action="delete", reference=reference(),
                            options={"product": "authentication", "region": "eu"})
    seed(stack, "jumio", request["reference"], "PENDING", product="authentications",
         region="eu")
    stack.sim_client.set_faults("jumio", fail_next=[403])
    # When the delete is submitted
    stack.producer.submit(request)
    # Then it ends unauthorized, not retried, kept for a person
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] == 403
    assert event["attempts"] == 1
    assert len(stack.provider_calls("jumio", request["reference"])) == 1
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    assert stack.sim_client.status("jumio", request["reference"]) == "PENDING"


def test_worker_without_user_agent_is_unauthorized_without_a_call(stack: Stack) -> None:
    # Given the only worker running has no IDVCANCEL_JUMIO_USER_AGENT
    stack.workers[0].stop()
    worker = stack.start_worker(IDVCANCEL_JUMIO_USER_AGENT="")
    request = stack.request(provider="jumio", action="delete", reference=reference())
    seed(stack, "jumio", request["reference"], "DONE", product="scans", region="us")
    # When a delete is submitted
    stack.producer.submit(request)
    # Then it ends unauthorized naming the setting, and Jumio never saw a call
    event = stack.result(request["request_id"])
    assert event["outcome"] == "unauthorized" and event["http_status"] is None
    assert event["error"]["code"] == "missing_credentials"
    assert "IDVCANCEL_JUMIO_USER_AGENT" in event["error"]["message"]
    assert stack.provider_calls("jumio", request["reference"]) == []
    assert stack.sim_client.status("jumio", request["reference"]) == "DONE"
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    # And the worker warned about it when it started
    assert "IDVCANCEL_JUMIO_USER_AGENT is not set" in worker.log_text()


def test_cancel_has_no_api_and_is_rejected_without_a_call(stack: Stack) -> None:
    request = stack.request(provider="jumio", action="cancel", reference=reference())
    seed(stack, "jumio", request["reference"], "PENDING", product="scans", region="us")
    # Published raw, past the producer (which refuses it): the worker's own check
    send_process(stack.broker_url, request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "action_not_supported"
    assert "no API to cancel" in event["error"]["message"]
    assert stack.provider_calls("jumio", request["reference"]) == []


def test_reference_over_36_characters_is_rejected_without_a_call(stack: Stack) -> None:
    request = stack.request(provider="jumio", action="delete", reference="r" * 37)
    seed(stack, "jumio", request["reference"], "PENDING", product="scans", region="us")
    # Published raw, past the producer (which refuses it): the worker's own check
    send_process(stack.broker_url, request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "invalid_reference"
    assert "at most 36" in event["error"]["message"]
    assert stack.provider_calls("jumio", request["reference"]) == []


def test_invalid_options_are_rejected_without_a_call(stack: Stack) -> None:
    # Given a delete naming a product Jumio does not have
    request = stack.request(provider="jumio", action="delete", reference=reference(),
                            options={"product": "selfie", "region": "eu"})
    seed(stack, "jumio", request["reference"], "PENDING", product="scans", region="eu")
    # Published raw, past the producer (which refuses it): the worker's own check
    send_process(stack.broker_url, request)
    # Then it is rejected before any call, the message naming the option
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "invalid_options"
    assert "options.product" in event["error"]["message"]
    assert stack.provider_calls("jumio", request["reference"]) == []
