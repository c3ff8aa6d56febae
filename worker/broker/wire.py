"""Celery task protocol 2: as kombu's Redis transport lays a message in the queue list,
and the body and headers an AMQP message carries (``worker.broker.amqp``).

Celery's own ``send_task`` costs about half a millisecond of CPU per message (routing,
copies of the exchange and queue declarations, a repr of the arguments). For bulk
submission we build the same JSON here and ``LPUSH`` it in pipelined chunks: identical
to what a worker receives from ``send_task`` (tests compare the two), at a fraction of
the cost. Signed messages (``worker.broker.signing``) always go through Celery.

Every message our producers send carries the request id in the header ``REQUEST_ID_HEADER``
as well, signed or not: the reconciler (``worker.triggers.reconcile``) reads which request waits
at the end of the queue without decoding (or verifying) a body.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from worker.contract import QUEUE, TASK_NAME

#: The message header naming the request a message carries (ours only; foreign producers
#: need not send it).
REQUEST_ID_HEADER = "idvcancel_request_id"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED)
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_body_json(request_json: str) -> bytes:
    """The body of an ``idvcancel.process`` message, ``[args, kwargs, embed]``: the same
    bytes as ``json.dumps([[request], {}, _EMBED])``, without parsing the request."""
    return f"[[{request_json}], {{}}, {_EMBED_JSON}]".encode()


def task_headers(task_id: str, request_id: str) -> dict[str, Any]:
    """The protocol-2 headers Celery's ``send_task`` writes, plus ``REQUEST_ID_HEADER``."""
    return {
        "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "(request,)", "kwargsrepr": "{}", "origin": _ORIGIN,
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {}, REQUEST_ID_HEADER: request_id,
    }


def amqp_headers(task_id: str, request_id: str) -> dict[str, Any]:
    """The headers of an AMQP message: what the worker reads, nothing more. py-amqp
    serialises header tables in Python, item by item, and the full set Celery writes was
    half of the publisher's CPU; the worker takes the rest as defaults (as it does from
    celery-node, which sends only ``lang``, ``task`` and ``id``)."""
    return {"lang": "py", "task": TASK_NAME, "id": task_id, "root_id": task_id,
            "retries": 0, REQUEST_ID_HEADER: request_id}


def encode(request: dict[str, Any], task_id: str | None = None) -> str:
    """The Redis queue entry for one ``idvcancel.process`` call with ``request`` as its argument.

    Examples:
        >>> entry = json.loads(encode({"request_id": "r-1"}, "t-1"))
        >>> entry["headers"]["task"], entry["properties"]["delivery_info"]["routing_key"]
        ('idvcancel.process', 'idvcancel')
    """
    return encode_json(json.dumps(request), str(request["request_id"]), task_id)


def encode_json(request_json: str, request_id: str, task_id: str | None = None) -> str:
    """``encode`` for a request already serialized: the producer writes the same JSON to
    the intake index, and serializing it once is a sixth of a bulk push's CPU."""
    task_id = task_id or new_task_id()
    return json.dumps({
        "body": base64.b64encode(task_body_json(request_json)).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task_headers(task_id, request_id),
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "argsrepr": "(request,)", "kwargsrepr": "{}",
            "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def request_id_of(entry: str | bytes) -> str | None:
    """The request id a queue entry carries: our header, else (a foreign producer's JSON
    message) the body's first argument. None when neither can be read (a signed foreign
    message, another task, not a message at all).

    Examples:
        >>> request_id_of(encode({"request_id": "r-1"}))
        'r-1'
        >>> request_id_of("not json") is None
        True
    """
    try:
        envelope = json.loads(entry)
        headers = envelope.get("headers") or {}
        if isinstance(found := headers.get(REQUEST_ID_HEADER), str):
            return found
        if headers.get("task") != TASK_NAME or envelope.get("content-type") != "application/json":
            return None
        body = envelope["body"]
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        found = json.loads(body)[0][0]["request_id"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return found if isinstance(found, str) else None
