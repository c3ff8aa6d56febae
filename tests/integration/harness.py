"""Typed helpers for integration tests: read streams, wait for things, enqueue messages.

Messages are enqueued exactly the way an outside producer would: a bare
``celery.Celery(broker=url)`` app that knows nothing about the worker's code, or a raw
kombu publish for bodies Celery itself could never produce.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, cast

import celery
import kombu
import redis

from config.broker import DEFAULT_DELIVERY_LIMIT, amqp_queues, is_amqp
from config.celery import rabbitmq_options

__all__ = [
    "QUEUE",
    "RESULTS_STREAM",
    "close_producers",
    "producer_app",
    "read_stream",
    "send_process",
    "send_raw",
    "wait_for",
    "wait_for_results",
]

T = TypeVar("T")

QUEUE = "idvcancel"
PROCESS_TASK = "idvcancel.process"
RESULTS_STREAM = "idvcancel:results"
RESULTS_FIELD = "event"
_XRANGE_PAGE = 1000

_producers: dict[str, celery.Celery] = {}
_producers_lock = threading.Lock()


# -- reading --------------------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _xrange_all(
    client: redis.Redis, stream: str, start: str = "-"
) -> list[tuple[str, dict[str, Any]]]:
    """Every entry of ``stream`` from ``start`` (inclusive) on, paged."""
    entries: list[tuple[str, dict[str, Any]]] = []
    low = start
    while True:
        page = cast(
            "list[tuple[Any, dict[Any, Any]]]",
            client.xrange(stream, min=low, max="+", count=_XRANGE_PAGE) or [],
        )
        for entry_id, fields in page:
            entries.append((_text(entry_id), {_text(k): v for k, v in fields.items()}))
        if len(page) < _XRANGE_PAGE:
            return entries
        low = "(" + entries[-1][0]


def read_stream(client: redis.Redis, stream: str, field: str) -> list[dict[str, Any]]:
    """XRANGE the whole stream and ``json.loads`` the given field of each entry.

    Entries without that field are skipped. Works with and without ``decode_responses``.
    """
    out: list[dict[str, Any]] = []
    for _entry_id, fields in _xrange_all(client, stream):
        if field in fields:
            out.append(cast("dict[str, Any]", json.loads(fields[field])))
    return out


# -- waiting --------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns something other than None (or False); return it.

    Raises AssertionError with ``message`` once ``timeout`` seconds have passed. The
    predicate is always tried once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s: {message or predicate!r}")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def wait_for_results(
    client: redis.Redis, request_ids: Collection[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Wait until ``idvcancel:results`` holds an ``event`` for every id in ``request_ids``.

    Returns ``{request_id: event}`` for exactly the wanted ids; when an id has several
    events the latest one wins (check duplicates with :func:`read_stream`). Raises
    AssertionError naming the ids still missing at the deadline.
    """
    wanted = set(request_ids)
    found: dict[str, dict[str, Any]] = {}
    cursor = "-"
    deadline = time.monotonic() + timeout
    while True:
        entries = _xrange_all(client, RESULTS_STREAM, cursor)
        for _entry_id, fields in entries:
            raw = fields.get(RESULTS_FIELD)
            if raw is None:
                continue
            event = cast("dict[str, Any]", json.loads(raw))
            request_id = event.get("request_id")
            if isinstance(request_id, str) and request_id in wanted:
                found[request_id] = event
        if entries:
            cursor = "(" + entries[-1][0]
        missing = wanted - found.keys()
        if not missing:
            return found
        if time.monotonic() >= deadline:
            shown = sorted(missing)
            more = f" (+{len(shown) - 20} more)" if len(shown) > 20 else ""
            raise AssertionError(
                f"timed out after {timeout:.1f}s: {len(missing)} of {len(wanted)} request(s) "
                f"have no event in {RESULTS_STREAM}: {shown[:20]}{more}"
            )
        time.sleep(0.05)


# -- sending --------------------------------------------------------------------------


def producer_app(broker_url: str) -> celery.Celery:
    """The cached bare producer app for ``broker_url`` (one per URL; on RabbitMQ it
    declares the queues as the worker does, or the broker would refuse the publish)."""
    with _producers_lock:
        app = _producers.get(broker_url)
        if app is None:
            app = celery.Celery("idvcancel-test-producer", broker=broker_url,
                                set_as_current=False)
            app.conf.broker_connection_retry_on_startup = True
            if is_amqp(broker_url):
                app.conf.update(rabbitmq_options(broker_url, DEFAULT_DELIVERY_LIMIT))
            _producers[broker_url] = app
        return app


def close_producers() -> None:
    """Close every cached producer app (their connection pools)."""
    with _producers_lock:
        apps = list(_producers.values())
        _producers.clear()
    for app in apps:
        app.close()


def _queue(name: str) -> kombu.Queue:
    return kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)


def _declare(producer: kombu.Producer, queue: str) -> None:
    """Make sure exchange ``queue`` routes to queue ``queue`` in Redis, on every send.

    Tests FLUSHALL between runs, which deletes kombu's binding table
    (``_kombu.binding.<exchange>``), while a pooled connection still believes the binding
    is declared: kombu would then drop the message as undeliverable. So after the normal
    declare the binding is written again through the transport's own ``_queue_bind`` (an
    idempotent SADD that honours any key prefix).
    """
    channel = producer.channel
    assert channel is not None, "producer has no channel"
    transport = getattr(producer.connection, "transport", None)
    if getattr(transport, "driver_type", "") == "amqp":
        for declared in amqp_queues(DEFAULT_DELIVERY_LIMIT):
            declared.bind(channel).declare()
        return
    _queue(queue).bind(channel).declare()
    typeof = getattr(channel, "typeof", None)
    queue_bind = getattr(channel, "_queue_bind", None)
    if callable(typeof) and callable(queue_bind):
        meta = typeof(queue).prepare_bind(queue, queue, queue, None)
        queue_bind(queue, *meta)


def send_process(
    broker_url: str,
    request: object,
    *,
    task_name: str = PROCESS_TASK,
    queue: str = QUEUE,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> str:
    """Enqueue ``task_name`` with ``[request]`` (or ``args``) as JSON; returns the task id."""
    app = producer_app(broker_url)
    with app.producer_or_acquire() as producer:
        _declare(producer, queue)
        result = app.send_task(
            task_name,
            args=[request] if args is None else args,
            kwargs=kwargs,
            queue=queue,
            serializer="json",
            producer=producer,
        )
    return str(result.id)


def send_raw(
    broker_url: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    headers: Mapping[str, Any] | None = None,
) -> None:
    """Publish ``body`` untouched to queue ``idvcancel`` (exchange and routing key
    ``idvcancel``): for bodies Celery cannot decode (bad JSON, invalid UTF-8, ...)."""
    app = producer_app(broker_url)
    with app.producer_or_acquire() as producer:
        _declare(producer, QUEUE)
        producer.publish(
            body,
            exchange=QUEUE,
            routing_key=QUEUE,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=dict(headers or {}),
            retry=True,
        )
