"""``worker.broker.producer``: requests are refused at the producer, with a message naming the
field, before anything is sent; valid ones reach Redis as Celery protocol-2 messages,
in batches, each written to the intake index in the same step. Runs against the
session's real Redis (no worker)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from worker.broker.producer import Producer, load_jsonl, validate
from worker.errors import InvalidRequest, InvalidRequests


def request(n: int = 1, **fields: Any) -> dict[str, Any]:
    return {"request_id": f"r-{n}", "provider": "idpass", "action": "cancel",
            "reference": str(uuid.UUID(int=n)), "requested_by": "tests", **fields}


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer(redis_url)
    try:
        yield made
    finally:
        made.close()


def queued(client: redis.Redis) -> list[dict[str, Any]]:
    """The messages waiting on queue ``idvcancel``, oldest first."""
    raw = cast("list[str]", client.lrange("idvcancel", 0, -1))
    return [json.loads(m) for m in reversed(raw)]


def command_stats(client: redis.Redis) -> dict[str, dict[str, int]]:
    """``INFO commandstats``: calls (and times) per command since the last reset."""
    return cast("dict[str, dict[str, int]]", client.info("commandstats"))


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
        producer: Producer, redis_client: redis.Redis) -> None:
    # Given Redis counts the commands it runs
    redis_client.config_resetstat()
    sent: list[int] = []
    # When 25 requests are submitted 10 at a time
    ids = producer.submit_many([request(n) for n in range(25)], batch_size=10,
                               on_sent=sent.append)
    # Then three multi-value pushes went out, in order, and progress followed them
    stats = command_stats(redis_client)
    assert stats["cmdstat_lpush"]["calls"] == 3 and sent == [10, 10, 5]
    assert ids == [f"r-{n}" for n in range(25)]
    bodies = [json.loads(base64.b64decode(m["body"])) for m in queued(redis_client)]
    assert [b[0][0]["request_id"] for b in bodies] == ids


def test_every_push_is_written_to_the_intake_index_in_the_same_step(
        redis_client: redis.Redis, redis_url: str) -> None:
    # Given a producer whose clock says 1000.25 (and Redis counts the commands it runs)
    redis_client.config_resetstat()
    producer = Producer(redis_url, clock=lambda: 1000.25)
    try:
        # When one request is submitted alone and 7 more in chunks of 3
        producer.submit(request(0, reason="withdrawn"))
        producer.submit_many([request(n) for n in range(1, 8)], batch_size=3)
    finally:
        producer.close()
    # Then each is in the index with its push time and its validated request JSON
    index = dict(cast("list[tuple[str, float]]",
                      redis_client.zrange("idvcancel:intake", 0, -1, withscores=True)))
    assert index == {f"r-{n}": 1000.25 for n in range(8)}
    stored = json.loads(str(redis_client.hget("idvcancel:intake:requests", "r-0")))
    assert stored == request(0, reason="withdrawn", source="api", options={})
    # and each message names its request in a header (the reconciler reads the queue's tail)
    assert [m["headers"]["idvcancel_request_id"] for m in queued(redis_client)] == [
        f"r-{n}" for n in range(8)]
    # and the push and the index writes were one command each time (one script call)
    stats = command_stats(redis_client)
    assert stats["cmdstat_lpush"]["calls"] == stats["cmdstat_zadd"]["calls"] == 4


def test_a_request_pushed_again_keeps_its_first_push_time(
        redis_client: redis.Redis, redis_url: str) -> None:
    # Given a request pushed at t=100
    clock = iter([100.0, 250.0])
    producer = Producer(redis_url, clock=lambda: next(clock))
    try:
        producer.submit(request(1))
        # When the same request is pushed again at t=250
        producer.submit(request(1))
    finally:
        producer.close()
    # Then both messages are queued and the index still says 100: the reconciler's clock
    # starts at the first push
    assert redis_client.llen("idvcancel") == 2
    assert redis_client.zscore("idvcancel:intake", "r-1") == 100.0


def test_signed_messages_are_indexed_before_celery_sends_them(
        producer: Producer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a producer that signs (so it must go through Celery's send_task)
    producer.signed = True
    seen: list[tuple[str, bool, dict[str, Any]]] = []

    def send_task(name: str, args: list[dict[str, Any]], **options: Any) -> None:
        rid = args[0]["request_id"]
        seen.append((rid, redis_client.zscore("idvcancel:intake", rid) is not None,
                     options["headers"]))

    monkeypatch.setattr(producer.app, "send_task", send_task)
    # When requests are submitted, alone and in bulk
    producer.submit(request(1))
    producer.submit_many([request(2), request(3)])
    # Then each was in the index already when it was sent, and carries its id header
    assert seen == [(f"r-{n}", True, {"idvcancel_request_id": f"r-{n}"}) for n in (1, 2, 3)]
    assert redis_client.hlen("idvcancel:intake:requests") == 3


def test_a_redis_failure_mid_bulk_raises_and_leaves_the_connection_clean(
        producer: Producer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the third chunk's arguments cannot be built
    real = producer._push_args
    calls = 0

    def failing(chunk: Any) -> list[str | int]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise redis.ConnectionError("gone")
        return real(chunk)

    monkeypatch.setattr(producer, "_push_args", failing)
    # When 25 requests are submitted 10 at a time
    with pytest.raises(redis.ConnectionError):
        producer.submit_many([request(n) for n in range(25)], batch_size=10)
    # Then the chunks before it are queued and indexed, whole (the second was on its way
    # while the third was built)
    assert redis_client.llen("idvcancel") == redis_client.zcard("idvcancel:intake") == 20
    # and the producer still works (no reply of the interrupted call is read as another's)
    monkeypatch.setattr(producer, "_push_args", real)
    producer.submit_many([request(n) for n in range(30, 45)], batch_size=10)
    assert redis_client.llen("idvcancel") == 35


def test_bulk_entries_match_what_celery_itself_sends(producer: Producer,
                                                     redis_client: redis.Redis) -> None:
    # Given one request sent by Celery's send_task (as signed messages are) and one by the
    # bulk path
    producer.app.send_task("idvcancel.process", args=[validate(request(1)).model_dump(
        mode="json")], queue="idvcancel", headers={"idvcancel_request_id": "r-1"},
        argsrepr="(request,)", kwargsrepr="{}")
    producer.submit_many([request(2)])
    celery_entry, bulk_entry = queued(redis_client)
    # Then they differ only in ids and origin: same body shape, headers and routing
    for entry in (celery_entry, bulk_entry):
        entry["headers"].pop("origin")
        for key in ("id", "root_id", "idvcancel_request_id"):
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


def test_load_jsonl_reports_every_bad_line_with_its_own_number() -> None:
    # Given a file whose lines 2 and 4 are bad in different ways, around good ones
    lines = [json.dumps(request()), "{oops", json.dumps(request()),
             json.dumps(request(action="erase"))]
    # When it is loaded
    with pytest.raises(InvalidRequests) as caught:
        load_jsonl(lines)
    # Then both bad lines are named, each with its own line number and what is wrong
    assert [p.index for p in caught.value.problems] == [2, 4]
    assert caught.value.problems[0].reason.startswith("not valid JSON: ")
    assert caught.value.problems[0].reason.endswith("(column 2)")
    assert "action" in caught.value.problems[1].reason


# -- the providers' rules, checked before sending -----------------------------------------
RULE_BREAKERS = [
    (request(provider="gu1"), "reason_required", "gu1 requires a reason of at least 5"),
    (request(provider="jumio", action="delete", options={"product": "nope"}),
     "invalid_options", "invalid jumio delete options: options.product"),
    (request(reference="not-a-uuid"), "invalid_reference", "idpass references must be a UUID"),
    (request(action="delete"), "action_not_supported", "idpass has no API to delete"),
]


@pytest.mark.parametrize(("bad", "code", "words"), RULE_BREAKERS,
                         ids=[code for _, code, _ in RULE_BREAKERS])
def test_submit_refuses_a_request_that_breaks_its_providers_rule(
        producer: Producer, redis_client: redis.Redis, bad: dict[str, Any], code: str,
        words: str) -> None:
    """Given a request the worker would end rejected (a gu1 cancel without a reason, a
    Jumio product that does not exist, an ID Pass reference that is no UUID, ...)
    When it is submitted
    Then InvalidRequest names the rule (message and code) and nothing was sent."""
    with pytest.raises(InvalidRequest) as caught:
        producer.submit(bad)
    assert caught.value.code == code
    assert str(caught.value).startswith(words) and f"(rule {code})" in str(caught.value)
    assert redis_client.llen("idvcancel") == 0 and redis_client.zcard("idvcancel:intake") == 0


def test_submit_refuses_a_request_id_of_whitespace(
        producer: Producer, redis_client: redis.Redis) -> None:
    """Given a request whose id is only spaces and a tab / When it is submitted
    Then it is refused naming the field, and nothing was sent."""
    with pytest.raises(InvalidRequest) as caught:
        producer.submit(request(request_id=" \t "))
    assert caught.value.fields == ("request_id",) and caught.value.code == "invalid_request"
    assert str(caught.value) == "request_id: Value error, must not be only whitespace"
    assert redis_client.llen("idvcancel") == 0


def test_submit_many_reports_every_rule_broken_and_sends_nothing(
        producer: Producer, redis_client: redis.Redis) -> None:
    """Given a batch of good requests with three bad ones among them (two rules, the
    contract) / When it is submitted
    Then each bad one is reported with its place and its rule, and not one left."""
    batch = [request(1), request(2, provider="gu1"), request(3),
             request(4, reference="nope"), request(5, request_id="  ")]
    with pytest.raises(InvalidRequests) as caught:
        producer.submit_many(batch)
    assert [(p.index, p.code) for p in caught.value.problems] == [
        (1, "reason_required"), (3, "invalid_reference"), (4, "invalid_request")]
    assert str(caught.value.problems[0]).startswith("request #1: gu1 requires a reason")
    assert redis_client.llen("idvcancel") == 0 and redis_client.zcard("idvcancel:intake") == 0


def test_a_producer_without_the_rule_check_sends_it_for_the_worker_to_reject(
        redis_url: str, redis_client: redis.Redis) -> None:
    """Given a producer made with check_rules=False (the sweep's, the demo's)
    When a request that breaks a rule is submitted / Then it is sent (the worker will
    record it rejected), while the contract is still enforced."""
    unchecked = Producer(redis_url, check_rules=False)
    try:
        assert unchecked.submit(request(provider="gu1")) == "r-1"
        assert redis_client.llen("idvcancel") == 1
        with pytest.raises(InvalidRequest, match="request_id"):
            unchecked.submit(request(request_id=" "))
    finally:
        unchecked.close()
    assert redis_client.llen("idvcancel") == 1


def test_load_jsonl_reports_a_broken_rule_with_its_line_number() -> None:
    """Given a file whose second line is a gu1 cancel without a reason
    Then loading it names line 2 and the rule."""
    lines = [json.dumps(request(1)), json.dumps(request(2, provider="gu1")), "{oops"]
    with pytest.raises(InvalidRequests) as caught:
        load_jsonl(lines)
    assert [(p.index, p.code) for p in caught.value.problems] == [
        (2, "reason_required"), (3, "invalid_request")]
