"""``worker.broker.redis_transport``: the check of each popped queue item, the wrapping of junk,
and how the worker comes to use this transport.

The validator is pure, so it is tested here on every shape from
``tests/reliability/junk.py`` and on arbitrary items: whatever it hands on must be
something kombu can build a ``Message`` from, record as un-acked and restore after a
crash - the three places the stock transport broke. The end-to-end proof (a real worker
answering each shape) is ``tests/reliability/test_junk.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import inspect
import json
import time
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from hypothesis import given, settings
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from config.celery import REDIS_TRANSPORT, celery_config
from config.settings import Settings
from tests.reliability.junk import SHAPES, Junk, envelope, junk_items
from worker import scripts
from worker.broker import redis_transport as br
from worker.broker import wire

QUEUE = "idvcancel"

#: sha256 of kombu 5.7's ``Channel._brpop_read`` and ``Channel._get`` source, which
#: ``worker.broker.redis_transport`` copies with one line changed.
KOMBU_SOURCES = {
    "_brpop_read": "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f",
    "_get": "be26a9f1eb4cf8da2aa65f4815a1709bf80b4434b064d3d7146872d318ad506c",
}


def kombu_message(payload: dict[str, Any]) -> Any:
    """What kombu's virtual channel builds from a popped payload (memory channel: the
    same ``Message`` class and body codecs as Redis)."""
    channel: Any = kombu.Connection("memory://").channel()
    return channel.Message(payload, channel=channel)


def assert_kombu_can_carry(payload: dict[str, Any]) -> None:
    """The three steps that broke on junk: build the ``Message``, write its un-acked copy
    (``QoS.append``), and restore that copy after a crash (``_do_restore_message``)."""
    message = kombu_message(payload)
    info = message.delivery_info
    restored, _, _ = kombu_loads(kombu_dumps([message._raw, info["exchange"],
                                              info["routing_key"]]))
    if "headers" in restored:
        restored["headers"]["redelivered"] = True
    restored["properties"]["delivery_info"]["redelivered"] = True


# -- the shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.name for shape in SHAPES])
def test_each_junk_shape_is_named_or_passed_on(shape: Junk) -> None:
    # When the transport reads the item
    got = br.envelope_for(shape.raw, QUEUE)
    # Then junk is wrapped with the expected reason, a readable envelope passes
    assert br.unreadable_reason(kombu_message(got)) == shape.redis_reason
    # and kombu can carry whatever comes out
    assert_kombu_can_carry(got)


def test_a_wrapped_item_carries_its_raw_bytes_back_to_the_queue_it_came_from() -> None:
    # Given an item that is not valid UTF-8
    raw = b"\xff\xfe junk"
    # When it is wrapped
    wrapped = br.envelope_for(raw, "some-queue")
    # Then the body is the item, base64, under a content type nobody decodes
    message = kombu_message(wrapped)
    assert message.body == raw
    assert message.content_type == br.UNREADABLE_CONTENT_TYPE
    assert message.headers == {br.UNREADABLE_HEADER: br.NOT_UTF8}
    # and a restore after a crash goes back to the queue it was popped from
    assert message.delivery_info == {"exchange": "", "routing_key": "some-queue"}
    # and the wrapped envelope itself reads as well-formed (a redelivery is not wrapped twice)
    assert br.read_envelope(json.dumps(wrapped).encode()) == wrapped


def test_each_wrapped_item_gets_its_own_delivery_tag() -> None:
    # When the same junk is wrapped twice
    first, second = (br.envelope_for(b"{}", QUEUE) for _ in range(2))
    # Then the un-acked copies cannot overwrite each other
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_a_valid_message_passes_unchanged() -> None:
    # Given what our producer (and Celery) writes
    raw = wire.encode({"request_id": "r-1"}, "t-1")
    # When the transport reads it
    got = br.envelope_for(raw.encode(), QUEUE)
    # Then it is the message itself
    assert got == json.loads(raw)


def test_kombu_typed_values_decode_as_kombu_would_decode_them() -> None:
    # Given a header kombu's JSON writes as a typed value
    raw = envelope(headers={"at": {"__type__": "datetime", "__value__": "2026-01-01T00:00:00"}})
    # Then it reads as the same Python value kombu's own loads gives
    assert br.read_envelope(raw)["headers"] == kombu_loads(raw)["headers"]


def test_null_headers_are_dropped_so_a_restore_cannot_lose_the_message() -> None:
    # Given a readable envelope with "headers": null
    got = br.read_envelope(envelope(headers=None))
    # Then kombu sees no headers (as before) and the restore's write has nothing to trip on
    assert "headers" not in got
    assert_kombu_can_carry(got)


@pytest.mark.parametrize("encoding", [None, "utf-8", "UTF-8"])
def test_the_body_encodings_kombu_takes_are_taken(encoding: str | None) -> None:
    # Given a plain-text body, under each encoding name kombu reads as "no codec"
    raw = envelope(body="[[], {}, {}]", properties__body_encoding=encoding)
    # Then the envelope passes
    assert br.read_envelope(raw)["body"] == "[[], {}, {}]"


@pytest.mark.parametrize("raw", [b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}',
                                 b'{"a": ' + b"9" * 5000 + b"}"])
def test_numbers_kombu_could_not_restore_are_not_json(raw: bytes) -> None:
    # Then infinities and integers past Python's digit limit are refused as JSON
    with pytest.raises(br.NotAnEnvelope, match=br.NOT_JSON):
        br.read_envelope(raw)


def test_only_the_transports_own_reasons_are_trusted() -> None:
    # Given a producer's envelope that mimics a wrapped one, with its own text
    raw = envelope(content_type=br.UNREADABLE_CONTENT_TYPE,
                   headers={br.UNREADABLE_HEADER: "call +44 20 7946 0000"})
    # Then the consumer does not take its text as the reason
    assert br.unreadable_reason(kombu_message(br.read_envelope(raw))) is None


# -- arbitrary items -------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(junk_items)
def test_whatever_is_popped_kombu_can_carry(raw: bytes) -> None:
    # When the transport reads any item at all
    got = br.envelope_for(raw, QUEUE)
    # Then kombu can build, record and restore it, and junk keeps every byte
    assert_kombu_can_carry(got)
    if br.unreadable_reason(kombu_message(got)) is not None:
        assert base64.b64decode(got["body"]) == raw


# -- the transport and how the worker selects it ---------------------------------------


@pytest.mark.parametrize("method", sorted(KOMBU_SOURCES))
def test_the_copied_kombu_methods_are_unchanged(method: str) -> None:
    # Given kombu's source of a method worker.broker.redis_transport copies
    source = inspect.getsource(getattr(kombu_redis.Channel, method))
    # Then it is the source the copy was made from (else: redo the copy, update the pin)
    assert hashlib.sha256(source.encode()).hexdigest() == KOMBU_SOURCES[method], (
        f"kombu changed Channel.{method}: copy it again into worker/broker/redis_transport.py")


def test_a_redis_url_selects_the_checked_transport_with_the_urls_address() -> None:
    # Given the worker's configuration for a redis:// URL
    app = Celery("check", set_as_current=False)
    app.conf.update(celery_config(Settings(redis_url="redis://:pw@10.0.0.7:6390/3")))
    # When Celery opens its broker connection
    with app.connection_for_read() as conn:
        # Then the explicit transport wins over the URL scheme, and the URL still gives
        # the host, port, password and database
        assert conn.transport_cls == REDIS_TRANSPORT
        assert type(conn.transport) is br.Transport
        assert conn.transport.Channel is br.Channel
        assert (conn.hostname, conn.port, conn.password, conn.virtual_host) == (
            "10.0.0.7", 6390, "pw", "3")
    assert conn.transport.driver_type == "redis"  # Celery's Redis-only paths still apply


@pytest.mark.parametrize("url", ["rediss://10.0.0.7:6390/0",
                                 "sentinel://10.0.0.7:26379/0"])
def test_other_schemes_keep_kombus_own_transport(url: str) -> None:
    # Given a broker URL of another Redis scheme (sentinel:// is a broker only: the state
    # store's IDVCANCEL_REDIS_URL is what redis-py opens, and it has no sentinel://)
    # Then kombu picks the transport from the scheme, as it always did
    assert celery_config(Settings(broker_url=url))["broker_transport"] is None


def test_the_non_blocking_pop_wraps_junk_too(redis_url: str) -> None:
    # Given junk on the queue of the session's real Redis
    client = redis.Redis.from_url(redis_url)
    client.lpush(QUEUE, b"this is not json")
    # When it is taken with basic_get (the _get path, not the worker's BRPOP)
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as conn:
        channel: Any = conn.default_channel
        message = channel.basic_get(QUEUE, no_ack=True)
    client.close()
    # Then it arrives wrapped, with its bytes, instead of raising
    assert message.content_type == br.UNREADABLE_CONTENT_TYPE
    assert message.body == b"this is not json"


def drain_until(conn: kombu.Connection, done: Any, timeout: float = 5.0) -> None:
    """Drain ``conn`` until ``done()``: one drain may deliver a whole batch, or nothing."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out draining"
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.5)


# -- the connection dropping mid-run -----------------------------------------------------


def test_a_popped_item_whose_unacked_record_failed_is_pushed_back_and_taken_next(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two messages on the real queue, and a consumer whose first un-acked record
    # fails as it does when Redis goes away between kombu's BRPOP and its MULTI/EXEC
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as producer:
        queue = kombu.Queue(QUEUE, kombu.Exchange(QUEUE), routing_key=QUEUE)
        for body in ("first", "second"):
            producer.Producer().publish(body, exchange=queue.exchange, routing_key=QUEUE,
                                        declare=[queue])
    got: list[str] = []
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as conn:
        channel: Any = conn.default_channel
        real_append = channel.qos.append
        failures = iter([redis.ConnectionError("Connection closed by server.")])

        def append_fails_once(message: Any, tag: str) -> None:
            if (error := next(failures, None)) is not None:
                raise error
            real_append(message, tag)

        monkeypatch.setattr(channel.qos, "append", append_fails_once)
        # When the consumer pops the first message and the record fails
        with conn.Consumer(queue, callbacks=[lambda body, m: got.append(body)]), \
                pytest.raises(redis.ConnectionError):
            conn.drain_events(timeout=2)
    # Then the process holds it instead of dropping it
    assert [raw for _, raw in br.held()] != [] and got == []
    # and the next connection pushes it back first, so it is taken before the second
    def take(body: str, message: Any) -> None:
        got.append(body)
        message.ack()

    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as conn, \
            conn.Consumer(queue, callbacks=[take]):
        drain_until(conn, lambda: len(got) >= 2)
    assert got == ["first", "second"]
    assert br.held() == []
    assert redis.Redis.from_url(redis_url).llen(QUEUE) == 0


def test_closing_a_connection_kombu_already_detached_keeps_the_unacked_copy(
        redis_url: str) -> None:
    # Given a delivered, un-acked message (in the channel's memory and Redis's hash)
    client = redis.Redis.from_url(redis_url)
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as producer:
        producer.SimpleQueue(QUEUE).put("x")
    conn = kombu.Connection(redis_url, transport=REDIS_TRANSPORT)
    channel: Any = conn.default_channel
    assert channel.basic_get(QUEUE, no_ack=False) is not None
    # and kombu's collect has detached the transport while the channel stayed open
    # (Celery's reconnect path when a BRPOP was in flight)
    conn._do_close_transport()
    # When the connection is closed, as Celery closes it next
    conn.close()  # stock kombu: AttributeError, "Unrecoverable error", the worker exits
    # Then the message is still recorded as un-acked, for the visibility-timeout restore
    assert client.hlen("unacked") == 1
    client.close()


# -- the batch pop -----------------------------------------------------------------------


def _consume(redis_url: str, prefetch: int | None, drains: int = 1) -> list[Any]:
    """Messages one consumer is handed in ``drains`` drains (un-acked)."""
    got: list[Any] = []
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT) as conn, \
            conn.Consumer(kombu.Queue(QUEUE), callbacks=[lambda _, m: got.append(m)]) as c:
        if prefetch is not None:
            c.qos(prefetch_count=prefetch)
        for _ in range(drains):
            conn.drain_events(timeout=2)
        # Celery would ack later; closing restores the un-acked to the queue, so look first
        records = redis.Redis.from_url(redis_url).hgetall("unacked")
        got.append(records)
    return got


def test_a_backlog_is_taken_in_batches_in_queue_order_each_recorded_once(
        redis_url: str) -> None:
    # Given 40 messages waiting, pushed as our producer pushes them
    client = redis.Redis.from_url(redis_url)
    raws = [wire.encode({"request_id": f"r-{i}"}, f"t-{i}") for i in range(40)]
    client.lpush(QUEUE, *raws)
    # When a consumer without a prefetch limit drains once
    *messages, records = _consume(redis_url, prefetch=None)
    # Then it got the BRPOP's message and a batch after it, in the order pushed
    assert [m.headers["id"] for m in messages] == [f"t-{i}" for i in range(1 + br.POP_BATCH)]
    # and each is recorded as un-acked once, as kombu records it, so a restore brings it back
    assert len(records) == len(messages)
    for message in messages:
        payload, exchange, routing_key = kombu_loads(records[message.delivery_tag.encode()])
        assert payload == json.loads(raws[int(message.headers["id"][2:])])
        assert (exchange, routing_key) == (
            message.delivery_info["exchange"], message.delivery_info["routing_key"])
    # and closing the consumer put back all it held: the 40 wait again, nothing un-acked
    assert client.llen(QUEUE) == 40 and client.hlen("unacked") == 0
    client.close()


def test_the_batch_never_takes_more_than_the_prefetch_limit(redis_url: str) -> None:
    # Given 40 messages waiting
    client = redis.Redis.from_url(redis_url)
    client.lpush(QUEUE, *[wire.encode({"request_id": f"r-{i}"}, f"t-{i}") for i in range(40)])
    # When a consumer that may hold 5 un-acked drains
    *messages, records = _consume(redis_url, prefetch=5)
    # Then it holds 5, each recorded
    assert len(messages) == 5 and len(records) == 5
    client.close()


def test_junk_in_a_batch_is_wrapped_and_recorded_wrapped(redis_url: str) -> None:
    # Given a valid message, then junk the script cannot read, then junk it can read as
    # an envelope but the transport must wrap (a body that is not base64)
    client = redis.Redis.from_url(redis_url)
    bad_body = envelope(body="%%% not base64")
    items = [wire.encode({"request_id": "r-0"}, "t-0").encode(), b"\xff not json",
             bad_body]
    client.lpush(QUEUE, *items)
    # When one drain takes all three
    *messages, records = _consume(redis_url, prefetch=None)
    # Then the two junk items arrive wrapped, with their bytes and their reasons
    assert [br.unreadable_reason(m) for m in messages] == [None, br.NOT_UTF8, br.BAD_BASE64]
    assert [m.body for m in messages[1:]] == items[1:]
    # and exactly what was handed on is recorded: no record under the junk's own tag
    assert sorted(records) == sorted(m.delivery_tag.encode() for m in messages)
    client.close()


def test_what_the_script_took_a_crashed_worker_gets_back(redis_url: str) -> None:
    # Given messages the batch script popped and recorded, and a worker that died then
    client = redis.Redis.from_url(redis_url)
    raws = [wire.encode({"request_id": f"r-{i}"}, f"t-{i}") for i in range(3)]
    client.lpush(QUEUE, *raws)
    scripts.script(client, "pop_batch")(keys=[QUEUE, "unacked", "unacked_index"],
                                        args=[10, time.time() - 60])
    assert client.llen(QUEUE) == 0
    # When kombu's visibility-timeout restore runs in another worker
    with kombu.Connection(redis_url, transport=REDIS_TRANSPORT,
                          transport_options={"visibility_timeout": 1}) as conn:
        channel: Any = conn.default_channel
        channel.qos.restore_visible()
    # Then every message is back on the queue, unchanged but for kombu's redelivered flag
    back = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
    assert sorted(b["headers"]["id"] for b in back) == ["t-0", "t-1", "t-2"]
    assert client.hlen("unacked") == 0
    client.close()
