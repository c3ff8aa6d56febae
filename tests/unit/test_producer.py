"""``worker.producer``: requests are refused at the producer, with a message naming the
field, before anything is sent; valid ones reach Redis as Celery protocol-2 messages,
pipelined in batches. Runs against the session's real Redis (no worker)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from worker.producer import InvalidRequest, Producer, load_jsonl, validate


def request(n: int = 1, **fields: Any) -> dict[str, Any]:
    return {"request_id": f"r-{n}", "provider": "idpass", "action": "cancel",
            "reference": f"ref-{n}", "requested_by": "tests", **fields}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer(redis_url)
    try:
        yield made
    finally:
        made.close()


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages waiting on queue ``idvcancel``, oldest first."""
    raw: list[str] = client.lrange("idvcancel", 0, -1)  # type: ignore[assignment]
    return [json.loads(m) for m in reversed(raw)]


def test_submit_refuses_a_wrong_type_naming_the_field(
        producer: Producer, redis_client: redis.Redis) -> None:
    # When a request id is a number
    with pytest.raises(InvalidRequest) as caught:
        producer.submit(request(request_id=42))
    # Then the error names the field and the problem, and nothing was sent
    assert str(caught.value) == "request_id: Input should be a valid string"
    assert caught.value.fields == ("request_id",) and caught.value.index is None
    assert redis_client.llen("idvcancel") == 0


def test_submit_refuses_unknown_fields_and_missing_ones(producer: Producer) -> None:
    bad = {**request(), "surprise": 1}
    del bad["reference"]
    with pytest.raises(InvalidRequest) as caught:
        producer.submit(bad)
    assert set(caught.value.fields) == {"reference", "surprise"}
    assert "reference: Field required" in str(caught.value)
    assert "surprise: Extra inputs are not permitted" in str(caught.value)


def test_submit_refuses_what_is_not_an_object(producer: Producer) -> None:
    with pytest.raises(InvalidRequest, match=r"must be a mapping .* got str"):
        producer.submit("r-1")  # type: ignore[arg-type]


def test_submit_many_sends_nothing_when_one_request_is_bad(
        producer: Producer, redis_client: redis.Redis) -> None:
    # Given a batch whose third request names an unknown provider
    batch = [request(1), request(2), request(3, provider="acme")]
    # When it is submitted
    with pytest.raises(InvalidRequest) as caught:
        producer.submit_many(batch)
    # Then the error says which request and which field, and not even the good ones left
    assert caught.value.index == 2 and caught.value.fields == ("provider",)
    assert str(caught.value).startswith("request #2: provider: Input should be 'idpass'")
    assert redis_client.llen("idvcancel") == 0


def test_submit_sends_a_protocol_2_message_to_queue_idvcancel(
        producer: Producer, redis_client: redis.Redis) -> None:
    # When one request is submitted
    assert producer.submit(request(reason="withdrawn")) == "r-1"
    # Then one Celery protocol-2 message waits on the list "idvcancel": task name and id in
    # the headers, the request (with its defaults) the one positional argument
    (message,) = queued(redis_client)
    assert message["headers"]["task"] == "idvcancel.process"
    assert message["properties"]["delivery_info"] == {"exchange": "",
                                                      "routing_key": "idvcancel"}
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [request(reason="withdrawn", source="api", options={})]
    assert kwargs == {}


def test_submit_many_sends_in_batches_and_reports_progress(
        producer: Producer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the producer's Redis commands are watched
    pushes: list[int] = []
    lpush = producer.redis.lpush

    def watched(name: str, *values: Any) -> Any:
        pushes.append(len(values))
        return lpush(name, *values)

    monkeypatch.setattr(producer.redis, "lpush", watched)
    sent: list[int] = []
    # When 25 requests are submitted 10 at a time
    ids = producer.submit_many([request(n) for n in range(25)], batch_size=10,
                               on_sent=sent.append)
    # Then three multi-value pushes went out, in order, and progress followed them
    assert pushes == [10, 10, 5] and sent == [10, 10, 5]
    assert ids == [f"r-{n}" for n in range(25)]
    bodies = [json.loads(base64.b64decode(m["body"])) for m in queued(redis_client)]
    assert [b[0][0]["request_id"] for b in bodies] == ids


def test_bulk_entries_match_what_celery_itself_sends(producer: Producer,
                                                     redis_client: redis.Redis) -> None:
    # Given one request sent by Celery's send_task and one by the bulk path
    producer.submit(request(1))
    producer.submit_many([request(2)])
    celery_entry, bulk_entry = queued(redis_client)
    # Then they differ only in ids and origin: same body shape, headers and routing
    for entry in (celery_entry, bulk_entry):
        entry["headers"].pop("origin")
        for key in ("id", "root_id"):
            entry["headers"].pop(key)
        for key in ("correlation_id", "delivery_tag", "reply_to"):
            entry["properties"].pop(key)
    assert celery_entry["headers"] == bulk_entry["headers"]
    assert celery_entry["properties"] == bulk_entry["properties"]
    celery_body = json.loads(base64.b64decode(celery_entry["body"]))
    bulk_body = json.loads(base64.b64decode(bulk_entry["body"]))
    assert celery_body[1:] == bulk_body[1:]
    assert celery_body[0][0]["request_id"] == "r-1" and bulk_body[0][0]["request_id"] == "r-2"


def test_validate_accepts_a_request_object_as_is() -> None:
    valid = validate(request())
    assert validate(valid) is valid


def test_load_jsonl_skips_blank_lines() -> None:
    lines = [json.dumps(request(1)), "   ", json.dumps(request(2)), ""]
    assert [r.request_id for r in load_jsonl(lines)] == ["r-1", "r-2"]


def test_load_jsonl_names_the_line_of_bad_json() -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_jsonl([json.dumps(request()), "", "{oops"])
    assert caught.value.index == 3 and caught.value.reason.startswith("not valid JSON")


def test_load_jsonl_names_the_line_and_field_of_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_jsonl([json.dumps(request(action="erase"))])
    assert caught.value.index == 1 and caught.value.fields == ("action",)
    assert caught.value.reason == "action: Input should be 'cancel' or 'delete'"


def test_load_jsonl_refuses_a_line_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequest, match=r"request #1: a request must be a mapping"):
        load_jsonl(["[1, 2]"])
