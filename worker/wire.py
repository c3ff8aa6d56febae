"""Celery task protocol 2: as kombu's Redis transport lays a message in the queue list,
and the body and headers an AMQP message carries (``worker.amqp``).

Celery's own ``send_task`` costs about half a millisecond of CPU per message (routing,
copies of the exchange and queue declarations, a repr of the arguments). For bulk
submission we build the same JSON here and ``LPUSH`` it in pipelined chunks: identical
to what a worker receives from ``send_task`` (tests compare the two), at a fraction of
the cost. Signed messages (``worker.security``) always go through Celery.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from worker.contract import QUEUE, TASK_NAME

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def new_task_id() -> str:
    return str(uuid.uuid4())


def task_body(request: dict[str, Any]) -> bytes:
    """The body of an ``idvcancel.process`` message: ``[args, kwargs, embed]`` as JSON."""
    return json.dumps([[request], {}, _EMBED]).encode()


def task_headers(task_id: str) -> dict[str, Any]:
    """The protocol-2 headers Celery's ``send_task`` writes (the same on both brokers)."""
    return {
        "lang": "py", "task": TASK_NAME, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "(request,)", "kwargsrepr": "{}", "origin": _ORIGIN,
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }


def amqp_headers(task_id: str) -> dict[str, Any]:
    """The headers of an AMQP message: what the worker reads, nothing more. py-amqp
    serialises header tables in Python, item by item, and the full set Celery writes was
    half of the publisher's CPU; the worker takes the rest as defaults (as it does from
    celery-node, which sends only ``lang``, ``task`` and ``id``)."""
    return {"lang": "py", "task": TASK_NAME, "id": task_id, "root_id": task_id,
            "retries": 0}


def encode(request: dict[str, Any], task_id: str | None = None) -> str:
    """The Redis queue entry for one ``idvcancel.process`` call with ``request`` as its
    argument (kombu's Redis transport wraps body, headers and properties in one JSON).

    Examples:
        >>> entry = json.loads(encode({"request_id": "r-1"}, "t-1"))
        >>> entry["headers"]["task"], entry["properties"]["delivery_info"]["routing_key"]
        ('idvcancel.process', 'idvcancel')
    """
    task_id = task_id or new_task_id()
    return json.dumps({
        "body": base64.b64encode(task_body(request)).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task_headers(task_id),
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "argsrepr": "(request,)", "kwargsrepr": "{}",
            "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })
