"""Junk on the queue: bytes a producer can put where a message belongs, kept as data so
that every broker's tests push the same ones.

Why a module of its own: "junk loses nothing and stops nothing" is a promise about the
bytes, not about one broker. ``test_junk.py`` pushes each shape straight onto the Redis
list with ``LPUSH``; a RabbitMQ test can publish the same ``raw`` bytes as message
bodies. ``SHAPES`` are the hand-picked cases, one per way an item can be wrong;
``junk_items`` is the Hypothesis strategy for everything else (arbitrary bytes, and
near-valid kombu envelopes with fields dropped, retyped or corrupted).

Each shape says what the Redis transport (``worker.broker.redis_transport``) names it, and which
bytes the dead letter shows: the item itself when the transport had to wrap it, the
envelope's body when the envelope is readable and only Celery refuses what it carries.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from worker.broker import redis_transport as br

MEGABYTE = 1024 * 1024
QUEUE = "idvcancel"
_DROP = object()  # envelope(): remove this key


def protocol2_body(request_id: str) -> bytes:
    """A Celery protocol-2 body carrying one request, as the README's minimal message."""
    request = {"request_id": request_id, "provider": "idpass", "action": "cancel",
               "reference": str(uuid.uuid4()), "requested_by": "junk-tests"}
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([[request], {}, embed]).encode()


def envelope_dict(payload: bytes = b"[]", **changes: Any) -> dict[str, Any]:
    """A well-formed kombu envelope (as a dict) around ``payload``, with ``changes`` applied:
    ``headers=...`` replaces a top-level key, ``properties__delivery_info__exchange=...``
    a nested one (skipped when an earlier change removed its parent), ``content_type``
    means ``content-type``; ``_DROP`` removes the key."""
    envelope: dict[str, Any] = {
        "body": base64.b64encode(payload).decode(),
        "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": QUEUE},
                       "delivery_mode": 2, "priority": 0},
    }
    for path, value in changes.items():
        *parents, leaf = [part.replace("_", "-") if part.startswith("content") else part
                          for part in path.split("__")]
        target: Any = envelope
        for part in parents:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if value is _DROP:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return envelope


def envelope(payload: bytes = b"[]", **changes: Any) -> bytes:
    """``envelope_dict`` as the bytes a producer would push."""
    return json.dumps(envelope_dict(payload, **changes)).encode()


@dataclass(frozen=True)
class Junk:
    """One hand-picked shape of junk."""

    name: str
    raw: bytes
    #: What ``worker.broker.redis_transport`` calls it, or None: a readable envelope (kombu carries
    #: it; Celery refuses what is inside).
    redis_reason: str | None
    #: ``error.code`` of its ``rejected`` result on Redis.
    redis_code: str = "unreadable_envelope"
    #: What the dead letter shows, when not ``raw`` (a readable envelope: its body).
    kept: bytes | None = None

    @property
    def shown(self) -> bytes:
        return self.raw if self.kept is None else self.kept


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def _readable(name: str, code: str, **changes: Any) -> Junk:
    """A well-formed envelope whose body Celery cannot take (its own body per shape, so
    each gets its own message id)."""
    body = protocol2_body(f"junk-{name}")
    return Junk(name, envelope(body, **changes), None, code, kept=body)


_NAN = envelope(b"[]").replace(b'"priority": 0', b'"priority": NaN')
_BAD_BYTE = envelope(b"[]", headers={"note": "BYTE"}).replace(b"BYTE", b"\xff")

SHAPES: list[Junk] = [
    Junk("not_json_text", b"this is not json", br.NOT_JSON),
    Junk("empty_item", b"", br.NOT_JSON),
    Junk("json_array", b"[1,2]", br.NOT_OBJECT),
    Junk("json_string", b'"str"', br.NOT_OBJECT),
    Junk("json_number", b"42", br.NOT_OBJECT),
    Junk("json_null", b"null", br.NOT_OBJECT),
    Junk("empty_object", b"{}", br.NO_PROPERTIES),
    Junk("body_only", b'{"body":"x"}', br.NO_PROPERTIES),
    Junk("properties_not_an_object", envelope(properties="x"), br.NO_PROPERTIES),
    Junk("no_delivery_tag", envelope(properties__delivery_tag=_DROP), br.NO_DELIVERY_TAG),
    Junk("delivery_info_missing", envelope(properties__delivery_info=_DROP),
         br.NO_DELIVERY_INFO),
    Junk("routing_key_not_a_string", envelope(properties__delivery_info__routing_key=5),
         br.NO_DELIVERY_INFO),
    Junk("bad_base64_body", envelope(body="abc"), br.BAD_BASE64),
    Junk("unknown_body_encoding", envelope(properties__body_encoding="rot13"),
         br.BAD_BODY_ENCODING),
    Junk("body_not_a_string", envelope(body=5), br.NO_BODY),
    Junk("headers_not_an_object", envelope(headers=[1]), br.BAD_HEADERS),
    Junk("content_type_not_a_string", envelope(content_type=5), br.BAD_CONTENT_TYPE),
    Junk("nan_priority", _NAN, br.NOT_JSON),
    Junk("kombu_type_unknown", envelope(headers={"x": {"__type__": "nope", "__value__": 1}}),
         br.BAD_TYPED_VALUE),
    Junk("lone_surrogate_escape", envelope(headers={"x": "\ud800"}), br.LONE_SURROGATE),
    Junk("nested_too_deeply", envelope(headers={"x": _nested(br.MAX_DEPTH + 5)}),
         br.TOO_DEEP),
    Junk("nested_past_the_recursion_limit", b"[" * 100_000, br.NOT_JSON),
    Junk("huge_2mb", b'{"body": "' + b"A" * (2 * MEGABYTE), br.NOT_JSON),
    Junk("invalid_utf8", b"\xff\xfe\x00 junk \xc3\x28", br.NOT_UTF8),
    Junk("invalid_utf8_inside_an_envelope", _BAD_BYTE, br.NOT_UTF8),
    _readable("missing_headers", "unknown_message", headers=_DROP),
    _readable("null_headers", "unknown_message", headers=None),
    _readable("unknown_content_type", "undecodable_message",
              content_type="application/x-unknown"),
]


# -- Hypothesis ------------------------------------------------------------------------

_text = st.text(max_size=20)
_typed = st.fixed_dictionaries({  # kombu's JSON hook turns these into Python objects
    "__type__": st.sampled_from(["datetime", "date", "uuid", "decimal", "bytes", "base64",
                                 "nope"]),
    "__value__": st.one_of(_text, st.integers()),
})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda kids: (st.lists(kids, max_size=3)
                  | st.dictionaries(_text, kids, max_size=3) | _typed),
    max_leaves=6,
)
#: Header names Celery and kombu act on, besides arbitrary ones. No task names: a junk
#: item is nobody's task (poison task messages are ``test_poison.py``'s).
_header_names = st.sampled_from(["id", "task", "lang", "compression", "redelivered",
                                 br.UNREADABLE_HEADER]) | _text
#: Where a near-valid envelope can go wrong.
_PATHS = ["body", "content_type", "content_encoding", "headers", "properties",
          "properties__delivery_tag", "properties__delivery_info",
          "properties__delivery_info__exchange", "properties__delivery_info__routing_key",
          "properties__body_encoding", "properties__priority"]


@st.composite
def near_envelopes(draw: st.DrawFn) -> bytes:
    """A kombu envelope with up to three fields dropped or replaced by any JSON value,
    sometimes cut short or with a byte flipped."""
    body = draw(st.binary(max_size=60) | st.builds(protocol2_body, st.uuids().map(str)))
    content_type = draw(st.sampled_from(["application/json", "application/x-unknown",
                                         br.UNREADABLE_CONTENT_TYPE]) | _text)
    headers = draw(st.dictionaries(_header_names, json_values, max_size=3))
    changes: dict[str, Any] = {"content_type": content_type, "headers": headers}
    for path in draw(st.lists(st.sampled_from(_PATHS), max_size=3, unique=True)):
        changes[path] = draw(st.just(_DROP) | json_values)
    raw = json.dumps(envelope_dict(body, **changes), ensure_ascii=draw(st.booleans()))
    data = raw.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "flip"]))
    if damage == "cut":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


#: Anything at all: arbitrary bytes, text, JSON of any shape, near-valid envelopes.
junk_items = st.one_of(
    st.binary(max_size=200),
    _text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_envelopes(),
)
