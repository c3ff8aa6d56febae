"""kombu's Redis transport, except that a queue item which is not a kombu envelope is
answered instead of being fatal.

Why: a producer in any language writes one ``LPUSH idvcancel '<json>'`` (README,
"Producers"). kombu's Redis channel pops the item and calls ``loads()`` on it, then builds
a ``Message`` from ``payload['properties']`` and records it as un-acked from
``delivery_info['exchange' / 'routing_key']``. An item that is not JSON raises out of the
event loop and kills the worker; one that is JSON of the wrong shape drops the
connection, and the item - already popped - is gone without a trace. Both happen before
any Celery or project code runs, so ``worker.broker.consumer`` cannot answer them.

Here each popped item is checked first (:func:`read_envelope`). Anything kombu could not
carry is wrapped (:func:`wrap`) into a well-formed envelope whose base64 body is the item's
raw bytes, with a content type the worker does not accept and a header naming the
reason. From there it travels the normal way: kombu records it as un-acked (a crash
before it is answered redelivers it), Celery cannot decode it, and
``RecordingConsumer.on_decode_error`` records it ``rejected`` (``unreadable_envelope``,
the reason as the error text) with an audit record and a dead letter holding the raw
bytes. Valid envelopes pass unchanged, parsed once as before.

Two more changes close holes kombu leaves when the connection to Redis drops mid-run
(a clean Redis restart, a crash, a network cut) and the same worker reconnects:

* **The pop window.** kombu pops with ``BRPOP`` and records the message as un-acked in a
  second round trip (reference-systems §9.1). When that second write fails, the item is
  only in this process's memory and kombu drops it. Here it is *held* (:func:`held`) and
  pushed back at the consuming end of its queue before the next ``BRPOP`` of the new
  connection, so it is the next message taken. Only a process killed inside the window
  still loses it, and the intake reconciler pushes that one again
  (``worker.triggers.reconcile``). If the write did land and only its answer was lost,
  the push-back is a second copy: a ledger duplicate, never a second call.
* **The close after collect.** Celery 5.7 collects the broken connection, then closes it;
  the close restores un-acked messages over a transport kombu has already detached, and
  kombu's ``AttributeError`` there is fatal to the worker ("Unrecoverable error"). Here it
  is a connection error, which the close ignores: nothing is lost by skipping that
  restore, every un-acked message is in Redis's ``unacked`` hash and comes back after the
  visibility timeout.

And one change saves work when a backlog waits: after each ``BRPOP`` the channel takes up
to ``POP_BATCH`` more items (within the prefetch limit) with ``lua/pop_batch.lua``, which
records each as un-acked in the same script that pops it: one round trip for the batch
instead of a ``BRPOP`` and a ``MULTI``/``EXEC`` per message, and no window between the
pop and the record for any of them. Each item is then read, wrapped if junk, and handed
to Celery exactly as a popped one; kombu's ``QoS.append`` skips the write the script made.

Only ``Channel._brpop_read`` (the worker's blocking pop) and ``Channel._get`` (the
non-blocking one, ``basic_get``) are copies: each is kombu 5.7's method with the one
``loads(bytes_to_str(item))`` replaced (and, in ``_brpop_read``, the hold).
``tests/unit/test_broker_redis.py`` pins kombu's source of both, so a kombu upgrade that
changes them fails until the copies are redone. ``config/celery.py`` selects this
transport for ``redis://`` broker URLs. Producers do not need it (they only push).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty  # what kombu's pops raise for "nothing there"
from typing import Any, NoReturn

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Channel as VirtualChannel
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import object_hook as kombu_object_hook

from worker import scripts
from worker.logs import get_logger

__all__ = ["REASONS", "UNREADABLE_CONTENT_TYPE", "UNREADABLE_HEADER", "Channel",
           "NotAnEnvelope", "Transport", "envelope_for", "held", "read_envelope",
           "unreadable_reason", "wrap"]

#: The content type of a wrapped item: no serializer knows it, so Celery cannot decode it.
UNREADABLE_CONTENT_TYPE = "application/x-idvcancel-unreadable"
#: The header of a wrapped item that says why it was wrapped (one of ``REASONS``).
UNREADABLE_HEADER = "x-idvcancel-unreadable"

NOT_UTF8 = "not valid UTF-8"
NOT_JSON = "not valid JSON"
BAD_TYPED_VALUE = "a kombu typed value (__type__) that does not decode"
LONE_SURROGATE = "a \\u escape that is not Unicode (lone surrogate)"
TOO_DEEP = "JSON nested too deeply"
NOT_OBJECT = "JSON but not an object"
NO_PROPERTIES = "no properties object"
NO_DELIVERY_TAG = "no delivery_tag string in the properties"
NO_DELIVERY_INFO = "no delivery_info object with exchange and routing_key strings"
BAD_BODY_ENCODING = "a body_encoding other than base64"
NO_BODY = "no body string"
BAD_BASE64 = "a body that is not valid base64"
BAD_HEADERS = "headers that are not an object"
BAD_CONTENT_TYPE = "a content-type or content-encoding that is not a string"
#: Every reason a wrapped item can carry. The consumer trusts the header only when it is
#: one of these, so a producer cannot put text of its own choosing in the record.
REASONS = frozenset({NOT_UTF8, NOT_JSON, BAD_TYPED_VALUE, LONE_SURROGATE, TOO_DEEP,
                     NOT_OBJECT, NO_PROPERTIES, NO_DELIVERY_TAG, NO_DELIVERY_INFO,
                     BAD_BODY_ENCODING, NO_BODY, BAD_BASE64, BAD_HEADERS, BAD_CONTENT_TYPE})

#: Deeper than any real envelope (Celery's is 3 levels) and far below the recursion limit
#: that kombu's ``dumps`` of the un-acked copy would otherwise hit in the consumer loop.
MAX_DEPTH = 32
#: A lone surrogate (say in the id header) cannot be written to Redis or a log line, so
#: the message could not be recorded. It can only come from a ``\\u`` escape (UTF-8
#: cannot encode one): the full walk runs only for items with such an escape or many
#: brackets, and the common item costs two byte counts and one regex search.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BASE64 = VirtualChannel.codecs["base64"]


class NotAnEnvelope(ValueError):
    """A queue item kombu could not carry; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuse_constant(name: str) -> NoReturn:
    raise NotAnEnvelope(NOT_JSON)  # NaN and Infinity are not JSON (RFC 8259)


def _object_hook(obj: dict[str, Any]) -> Any:
    try:  # kombu's: {"__type__": "datetime", "__value__": ...} and the like
        return kombu_object_hook(obj)
    except Exception:  # noqa: BLE001 - kombu's decoders raise what they raise
        raise NotAnEnvelope(BAD_TYPED_VALUE) from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: kombu's priority handling cannot take inf
        raise NotAnEnvelope(NOT_JSON)
    return value


def _walk(value: Any, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise NotAnEnvelope(TOO_DEEP)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise NotAnEnvelope(LONE_SURROGATE) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, depth)
            _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)


def _parse(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")  # strict: kombu would replace bad bytes and read on
    except UnicodeDecodeError:
        raise NotAnEnvelope(NOT_UTF8) from None
    try:
        payload = json.loads(text, object_hook=_object_hook,
                             parse_constant=_refuse_constant, parse_float=_finite)
    except NotAnEnvelope:
        raise
    except (ValueError, RecursionError):  # also: an integer of more than 4300 digits
        raise NotAnEnvelope(NOT_JSON) from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(raw):
        _walk(payload)
    return payload


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def read_envelope(raw: bytes | str) -> dict[str, Any]:
    """The kombu envelope in a queue item, checked for everything kombu's ``Message`` and
    ``QoS.append`` read (and the restore of an un-acked copy after a crash writes).

    Raises :class:`NotAnEnvelope` naming the first problem. A ``"headers": null`` is
    dropped: kombu reads it as no headers, but its restore would write into it and lose
    the message.

    Examples:
        >>> read_envelope(b'{"body": "", "properties": {"delivery_tag": "t",'
        ...               b' "delivery_info": {"exchange": "", "routing_key": "q"}}}')["body"]
        ''
        >>> read_envelope(b"[1, 2]")
        Traceback (most recent call last):
        ...
        worker.broker.redis_transport.NotAnEnvelope: JSON but not an object
    """
    payload = _parse(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    if not isinstance(payload, dict):
        raise NotAnEnvelope(NOT_OBJECT)
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        raise NotAnEnvelope(NO_PROPERTIES)
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        raise NotAnEnvelope(NO_DELIVERY_TAG)
    info = properties.get("delivery_info")
    if not (isinstance(info, dict) and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)):
        raise NotAnEnvelope(NO_DELIVERY_INFO)
    body = payload.get("body")
    if not isinstance(body, str):
        raise NotAnEnvelope(NO_BODY)
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        try:
            _BASE64.decode(body)  # the codec kombu decodes it with
        except (binascii.Error, ValueError):
            raise NotAnEnvelope(BAD_BASE64) from None
    elif not (encoding is None or (isinstance(encoding, str) and encoding.lower() == "utf-8")):
        raise NotAnEnvelope(BAD_BODY_ENCODING)  # kombu: no codec, AttributeError
    headers = payload.get("headers")
    if headers is None:
        payload.pop("headers", None)
    elif not isinstance(headers, dict):
        raise NotAnEnvelope(BAD_HEADERS)
    if not (_optional_str(payload.get("content-type"))
            and _optional_str(payload.get("content-encoding"))):
        raise NotAnEnvelope(BAD_CONTENT_TYPE)
    return payload


def _readable_task_id(data: bytes) -> str | None:
    try:
        payload = json.loads(data)
        task_id = payload["headers"]["id"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(task_id, str) or not 0 < len(task_id) <= 200:
        return None
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return task_id


def wrap(raw: bytes | str, reason: str, queue: str) -> dict[str, Any]:
    """A well-formed envelope that carries ``raw`` (base64) to the consumer as unreadable.

    A fresh delivery tag (the item's own, if any, cannot be trusted); exchange ``""``
    with the queue as routing key, so a restore after a crash puts it back where it
    was popped from. The producer's task id when one can still be read (a readable JSON
    object whose ``headers.id`` is a short, valid string: a request with a lone surrogate
    is then rejected under the id its producer knows); else none, and the consumer names
    it by the digest of the raw bytes, which a redelivery keeps.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    headers: dict[str, Any] = {UNREADABLE_HEADER: reason}
    if (task_id := _readable_task_id(data)) is not None:
        headers["id"] = task_id
    return {
        "body": base64.b64encode(data).decode("ascii"),
        "content-type": UNREADABLE_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": headers,
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


def envelope_for(raw: bytes | str, queue: str) -> dict[str, Any]:
    """What the consumer gets for a queue item: its envelope, or the item wrapped."""
    try:
        return read_envelope(raw)
    except NotAnEnvelope as exc:
        return wrap(raw, exc.reason, queue)


def unreadable_reason(message: Any) -> str | None:
    """Why the transport wrapped ``message`` (a kombu ``Message``), or None if it did not."""
    if getattr(message, "content_type", None) != UNREADABLE_CONTENT_TYPE:
        return None
    headers = getattr(message, "headers", None)
    reason = headers.get(UNREADABLE_HEADER) if isinstance(headers, dict) else None
    return reason if isinstance(reason, str) and reason in REASONS else None


#: The most items taken in one ``lua/pop_batch.lua`` call after a ``BRPOP``. Enough to
#: share the per-call cost; small enough that one of several worker processes does not
#: take a backlog its siblings are idle for.
POP_BATCH = 16

#: Items popped whose un-acked record could not be written: (queue, raw item), in pop
#: order. One list per process: the channel that popped them is gone by the time the
#: consumer reconnects, and its successor pushes them back.
_held: list[tuple[str, bytes]] = []
_held_lock = threading.Lock()


def held() -> list[tuple[str, bytes]]:
    """The items this process holds for pushing back (a copy; for tests and logs)."""
    with _held_lock:
        return list(_held)


def _hold(queue: str, item: bytes) -> None:
    with _held_lock:
        _held.append((queue, item))
    get_logger().warning("broker_pop_held", queue=queue, held=len(_held))


def _push_back_held(chan: Any) -> None:
    """Push the held items back where ``BRPOP`` takes next (the right end), oldest last
    pushed so it comes first. On failure they stay held for the next try."""
    with _held_lock:
        items, _held[:] = list(_held), []
    if not items:
        return
    try:
        with chan.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=True)
            for queue, item in reversed(items):
                pipe.rpush(queue, item)
            pipe.execute()
    except (redis.RedisError, OSError):
        with _held_lock:
            _held[:0] = items
        return
    get_logger().warning("broker_pop_pushed_back", count=len(items))


class QoS(kombu_redis.QoS):
    """kombu's un-acked bookkeeping, minus the write ``lua/pop_batch.lua`` already made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags the batch pop recorded in Redis, not yet appended in memory.
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            VirtualQoS.append(self, message, delivery_tag)  # memory only
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; the pops, the hold and the close differ (module docstring)."""

    QoS = QoS
    #: The client this channel's synchronous commands share (acks, the batch pop, puts):
    #: kombu builds a new one for each, 3 % of a busy worker's CPU. Made on first use,
    #: again when kombu replaced the pool it was made on (after a fork, on close).
    _sync_client: redis.Redis | None = None

    def shared_client(self) -> Any:
        chan: Any = self
        pool = chan.pool
        shared = self._sync_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._sync_client = chan._create_client()
        return shared

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self.shared_client()

    def _brpop_start(self, timeout: int | None = None) -> None:
        if _held:  # unlocked peek: the common case costs one list length
            _push_back_held(self)
        base: Any = kombu_redis.Channel  # kombu's stubs do not declare its private members
        base._brpop_start(self, timeout)

    def _take_more(self, key: bytes | str, queue: str) -> None:
        """After a ``BRPOP`` from ``key``: take what else waits there, up to ``POP_BATCH``
        and the prefetch limit, and deliver it in pop order."""
        chan: Any = self
        room = chan.qos.can_consume_max_estimate()
        count = POP_BATCH if room is None else min(POP_BATCH, room)
        if count <= 0 or chan._closing or chan.no_ack_consumers or chan.global_keyprefix:
            return  # closing: restore, not take; no_ack: kombu never appends, a record stays
        client = self.shared_client()
        popped = scripts.script(client, "pop_batch")(
            keys=[key, chan.unacked_key, chan.unacked_index_key], args=[count, time.time()])
        batch = []  # (envelope, raw item, whether the script's record of it stands)
        stale = []  # recorded as they came, but the transport wraps them: drop the record
        for tag, item in zip(popped[::2], popped[1::2], strict=True):
            envelope = envelope_for(item, queue)
            recorded = bool(tag) and envelope["properties"]["delivery_tag"] == bytes_to_str(tag)
            if tag and not recorded:
                stale.append(tag)
            batch.append((envelope, item, recorded))
        done = 0
        try:
            if stale:
                pipe = client.pipeline()
                pipe.zrem(chan.unacked_index_key, *stale)
                pipe.hdel(chan.unacked_key, *stale)
                pipe.execute()
            for done, (envelope, _, recorded) in enumerate(batch):  # noqa: B007 - read below
                if recorded:
                    chan.qos.recorded.add(envelope["properties"]["delivery_tag"])
                chan.connection._deliver(envelope, queue)
        except chan.connection_errors:
            # the rest is only in this process, unless the script's record of it stands
            for envelope, item, recorded in batch[done:]:
                tag = envelope["properties"]["delivery_tag"]
                if not recorded and tag not in chan.qos._delivered:
                    _hold(queue, item)
            raise

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # detached by kombu's collect: see the docstring
            raise redis.ConnectionError("the broker connection is already closed")
        base: Any = kombu_redis.Channel
        return base._connparams(self, asynchronous)

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read; the one change is marked. kombu's stubs do not
        # declare the private members it uses, hence ``chan``.
        chan: Any = self
        try:
            try:
                dest__item = chan.client.parse_response(chan.client.connection,
                                                        "BRPOP",
                                                        **options)
            except chan.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                chan.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(chan.sep, 1)[0]
                chan._queue_cycle.rotate(dest)
                envelope = envelope_for(item, dest)  # changed
                try:  # changed: the hold
                    chan.connection._deliver(envelope, dest)
                except chan.connection_errors:
                    if envelope["properties"]["delivery_tag"] not in chan.qos._delivered:
                        _hold(dest, item)  # its un-acked record was never written
                    raise
                chan._take_more(dest__item[0], dest)  # changed: the batch
                return True
            raise Empty()
        finally:
            chan._in_poll = None
            # The BRPOP connection is idle now: kombu's moment to flush a pending
            # streaming re-auth token.
            chan._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        # kombu 5.7's Channel._get (which takes no timeout: the stubs' base signature
        # does); the one change is marked.
        chan: Any = self
        with chan.conn_or_acquire() as client:
            for pri in chan.priority_steps:
                item = client.rpop(chan._q_for_pri(queue, pri))
                if item:
                    chan._maybe_update_queues_expire(client, queue)
                    return envelope_for(item, queue)  # changed
            chan._maybe_update_queues_expire(client, queue)
            raise Empty()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`; selected by ``config/celery.py``."""

    Channel = Channel
