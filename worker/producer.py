"""Enqueue requests from Python: validated before they leave, so a bad request fails
at the producer with a clear error instead of ending ``rejected`` later.

Examples:
    >>> from worker.producer import Producer
    >>> producer = Producer("redis://127.0.0.1:6379/0")      # doctest: +SKIP
    >>> producer.submit({"request_id": "r-1", "provider": "idpass", "action": "cancel",
    ...     "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
    ...     "requested_by": "onboarding"})                      # doctest: +SKIP
    'r-1'
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from pydantic import ValidationError

from config.broker import DEFAULT_DELIVERY_LIMIT, is_amqp
from config.celery import rabbitmq_options
from config.settings import Settings
from worker import wire
from worker.amqp import AmqpPublisher
from worker.contract import QUEUE, TASK_NAME, CancelRequest
from worker.intake import describe
from worker.security import configure_signing

#: Messages sent in one Redis command (one multi-value LPUSH) by ``submit_many``.
BATCH_SIZE = 500


class InvalidRequest(ValueError):
    """A request that does not satisfy the contract; ``index`` is its place in a batch,
    ``fields`` the names of the fields at fault (empty when the whole value is wrong)."""

    def __init__(self, message: str, index: int | None = None,
                 fields: tuple[str, ...] = ()) -> None:
        super().__init__(message if index is None else f"request #{index}: {message}")
        self.index = index
        self.reason = message
        self.fields = fields


def validate(request: CancelRequest | Mapping[str, Any], index: int | None = None
             ) -> CancelRequest:
    """The request as a ``CancelRequest``, or ``InvalidRequest`` saying what is wrong.

    Examples:
        >>> validate({"request_id": 42})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        worker.producer.InvalidRequest: request_id: Input should be a valid string; ...
    """
    if isinstance(request, CancelRequest):
        return request
    if not isinstance(request, Mapping):
        raise InvalidRequest(
            f"a request must be a mapping (a JSON object), got {type(request).__name__}", index)
    try:
        return CancelRequest.model_validate(dict(request))
    except ValidationError as exc:
        fields = tuple(dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"]))
        raise InvalidRequest(describe(exc), index, fields) from exc


def load_jsonl(lines: Iterable[str]) -> list[CancelRequest]:
    """Parse and validate JSON Lines (one request object a line; blank lines skipped).

    Raises ``InvalidRequest`` for the first bad line, with ``index`` set to its line
    number (1-based), so a caller can refuse the whole file before sending anything.

    Examples:
        >>> load_jsonl(['{"request_id": "r-1", "provider": "idpass", "action": "cancel",'
        ...             ' "reference": "ref-1", "requested_by": "ops"}'])[0].request_id
        'r-1'
        >>> load_jsonl(["", "{not json"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        worker.producer.InvalidRequest: request #2: not valid JSON: ...
    """
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise InvalidRequest(f"not valid JSON: {exc}", number) from exc
        requests.append(validate(value, number))
    return requests


def _chunks(items: Sequence[CancelRequest], size: int) -> Iterator[Sequence[CancelRequest]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


#: Celery copies a repr of the arguments into every message's headers (``argsrepr``)
#: for monitoring. The request is already in the body; computing that repr was a third
#: of ``submit_many``'s CPU, and headers are read by tools that should not see a reason.
_REPRS: dict[str, Any] = {"argsrepr": "(request,)", "kwargsrepr": "{}"}


class Producer:
    """Sends ``idvcancel.process`` messages to the broker.

    Parameters:
        redis_url: the state store's Redis (and the broker when no other is given).
        settings: signing and, through ``IDVCANCEL_BROKER_URL``, the broker.
        broker_url: the broker, overriding ``settings`` (``amqp://`` for RabbitMQ).
    """

    def __init__(self, redis_url: str, settings: Settings | None = None, *,
                 broker_url: str | None = None) -> None:
        self.broker_url = broker_url or (settings.broker_url if settings else "") or redis_url
        delivery_limit = settings.delivery_limit if settings else DEFAULT_DELIVERY_LIMIT
        self.app = Celery("idvcancel-producer", broker=self.broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_connection_retry_on_startup=True)
        #: On RabbitMQ, unsigned messages are published in confirmed batches.
        self.amqp: AmqpPublisher | None = None
        if is_amqp(self.broker_url):
            self.app.conf.update(rabbitmq_options(self.broker_url, delivery_limit))
            self.amqp = AmqpPublisher(self.broker_url, delivery_limit)
        #: Signed messages must go through Celery's auth serializer.
        self.signed = settings is not None and configure_signing(self.app, settings)
        self.redis = redis.Redis.from_url(redis_url)

    def submit(self, request: CancelRequest | Mapping[str, Any]) -> str:
        """Validate and enqueue one request; returns its ``request_id``."""
        valid = validate(request)
        if self.amqp is not None and not self.signed:
            self.amqp.publish([valid.model_dump(mode="json")])
        else:
            self.app.send_task(TASK_NAME, args=[valid.model_dump(mode="json")], queue=QUEUE,
                               **_REPRS)
        return valid.request_id

    def submit_many(
        self,
        requests: Iterable[CancelRequest | Mapping[str, Any]],
        *,
        batch_size: int = BATCH_SIZE,
        on_sent: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Validate every request first (nothing is sent if one is invalid), then
        enqueue them over one connection, ``batch_size`` messages per Redis round trip.

        Parameters:
            requests: mappings or ``CancelRequest`` objects.
            batch_size: messages buffered before one round trip (kombu's
                ``Producer.batch``, kombu 5.7 here; a kombu without it sends each
                message in its own round trip).
            on_sent: called with the number of messages just written, after each batch.

        On RabbitMQ each chunk is published under publisher confirms (``worker.amqp``):
        a chunk counts as sent once the broker confirmed every message of it.

        If the broker fails mid-way the call raises (``redis.ConnectionError``;
        ``worker.amqp.PublishNotConfirmed`` or a connection error on RabbitMQ; kombu's
        ``BatchPublishError`` when messages are signed) and the chunks before it are
        already queued: submitting the same requests again is safe, because a request
        id is carried out once (a second copy only adds a ``duplicate`` audit record).

        Examples:
            >>> producer.submit_many(requests, on_sent=bar.update)  # doctest: +SKIP
            ['r-1', 'r-2']
        """
        valid = [validate(r, i) for i, r in enumerate(requests)]
        if self.signed:
            self._send_through_celery(valid, batch_size, on_sent)
        elif self.amqp is not None:
            for chunk in _chunks(valid, batch_size):
                self.amqp.publish([r.model_dump(mode="json") for r in chunk])
                if on_sent is not None:
                    on_sent(len(chunk))
        else:
            self._push(valid, batch_size, on_sent)
        return [r.request_id for r in valid]

    def _push(self, valid: Sequence[CancelRequest], batch_size: int,
              on_sent: Callable[[int], None] | None) -> None:
        """The protocol-2 entries (``worker.wire``), one multi-value LPUSH per chunk.

        ``LPUSH q a b c`` inserts a, then b, then c at the head: the same order as three
        single pushes, with one reply to parse instead of one per message, and a chunk
        is on the queue whole or not at all.
        """
        for chunk in _chunks(valid, batch_size):
            self.redis.lpush(QUEUE, *(wire.encode(r.model_dump(mode="json")) for r in chunk))
            if on_sent is not None:
                on_sent(len(chunk))

    def _send_through_celery(self, valid: Sequence[CancelRequest], batch_size: int,
                             on_sent: Callable[[int], None] | None) -> None:
        with self.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)
            for chunk in _chunks(valid, batch_size):
                context = batch(batch_size) if callable(batch) else contextlib.nullcontext()
                with context:  # flushed (one pipeline round trip) on a clean exit
                    for request in chunk:
                        self.app.send_task(TASK_NAME, args=[request.model_dump(mode="json")],
                                           queue=QUEUE, producer=producer, **_REPRS)
                if on_sent is not None:
                    on_sent(len(chunk))

    def close(self) -> None:
        if self.amqp is not None:
            self.amqp.close()
        self.app.close()
        self.redis.close()
