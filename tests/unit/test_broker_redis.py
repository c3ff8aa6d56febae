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
import hashlib
import inspect
import json
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
        for _ in range(2):
            conn.drain_events(timeout=2)
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
