"""Enqueue requests from Python: checked before they leave — against the contract and
against the provider's rules, by the very test the worker runs before a call
(``worker.providers.admissible``) — so a bad request fails at the producer with a clear
error naming the rule instead of ending ``rejected`` later.

Examples:
    >>> from worker.broker.producer import Producer
    >>> producer = Producer("redis://127.0.0.1:6379/0")      # doctest: +SKIP
    >>> producer.submit({"request_id": "r-1", "provider": "idpass", "action": "cancel",
    ...     "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95",
    ...     "requested_by": "onboarding"})                      # doctest: +SKIP
    'r-1'
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from pydantic import ValidationError

from config.broker import DEFAULT_DELIVERY_LIMIT, is_amqp
from config.celery import rabbitmq_options
from config.settings import Settings
from worker import keys, scripts
from worker.broker import wire
from worker.broker.amqp import AmqpPublisher
from worker.broker.signing import configure_signing
from worker.contract import QUEUE, TASK_NAME, CancelRequest
from worker.delivery.intake import describe
from worker.errors import InvalidRequest, InvalidRequests, RuleViolation
from worker.providers import admissible
from worker.redis_client import redis_client

#: Messages sent in one Redis command (one ``lua/push.lua`` call: a multi-value LPUSH
#: and the intake index entries) by ``submit_many``.
BATCH_SIZE = 500

_PUSH_KEYS = (QUEUE, keys.INTAKE, keys.INTAKE_REQUESTS)


def validate(request: CancelRequest | Mapping[str, Any], index: int | None = None
             ) -> CancelRequest:
    """The request as a ``CancelRequest``, or ``InvalidRequest`` saying what is wrong.

    Examples:
        >>> validate({"request_id": 42})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        worker.errors.InvalidRequest: request_id: Input should be a valid string; ...
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


def admit(request: CancelRequest | Mapping[str, Any], index: int | None = None
          ) -> CancelRequest:
    """``validate``, then the provider's rules as the worker applies them: the request,
    or ``InvalidRequest`` whose ``code`` (and message) names the broken rule.

    Examples:
        >>> admit({"request_id": "r-1", "provider": "idpass", "action": "cancel",
        ...        "reference": "ref-1", "requested_by": "ops"})
        Traceback (most recent call last):
        worker.errors.InvalidRequest: idpass references must be a UUID (8-4-4-4-12 hex digits) (rule invalid_reference)
    """  # noqa: E501
    valid = validate(request, index)
    try:
        admissible(valid)
    except RuleViolation as exc:
        raise InvalidRequest(f"{exc.message} (rule {exc.code})", index,
                             (exc.field,) if exc.field else (), exc.code) from exc
    return valid


def _admit_all(requests: Iterable[tuple[int, Any]], *, check_rules: bool = True
               ) -> list[CancelRequest]:
    """Every ``(index, request)`` checked (``admit``, or only ``validate`` without
    ``check_rules``): all of them, or ``InvalidRequests`` listing each bad one."""
    accept = admit if check_rules else validate
    valid: list[CancelRequest] = []
    problems: list[InvalidRequest] = []
    for index, request in requests:
        try:
            valid.append(accept(request, index))
        except InvalidRequest as exc:
            problems.append(exc)
    if problems:
        raise InvalidRequests(problems)
    return valid


def load_jsonl(lines: Iterable[str]) -> list[CancelRequest]:
    """Parse and check JSON Lines (one request object a line; blank lines skipped), as
    ``admit`` does: the contract and the provider's rules.

    Every line is checked: if any is bad, ``InvalidRequests`` lists each bad one, with
    ``index`` its line number (1-based), so a caller can report them all and refuse the
    whole file before sending anything. A JSON error names its column in that line.

    Examples:
        >>> load_jsonl(['{"request_id": "r-1", "provider": "txcloud", "action": "cancel",'
        ...             ' "reference": "ref-1", "requested_by": "ops"}'])[0].request_id
        'r-1'
        >>> load_jsonl(["", "{not json", "[]"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        worker.errors.InvalidRequests: request #2: not valid JSON: ... (column 2); request #3: ...
    """
    parsed: list[tuple[int, Any]] = []
    problems: list[InvalidRequest] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(InvalidRequest(f"not valid JSON: {exc.msg} (column {exc.colno})",
                                           number))
    try:
        requests = _admit_all(parsed)
    except InvalidRequests as exc:
        problems.extend(exc.problems)
    if problems:
        raise InvalidRequests(sorted(problems, key=lambda problem: problem.index or 0))
    return requests


def _chunks(items: Sequence[CancelRequest], size: int) -> Iterator[Sequence[CancelRequest]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


#: Celery copies a repr of the arguments into every message's headers (``argsrepr``)
#: for monitoring. The request is already in the body; computing that repr was a third
#: of ``submit_many``'s CPU, and headers are read by tools that should not see a reason.
_REPRS: dict[str, Any] = {"argsrepr": "(request,)", "kwargsrepr": "{}"}


class Producer:
    """Sends ``idvcancel.process`` messages to the broker, and writes each request to the
    intake index (``worker.triggers.reconcile``) with its push, so that a message the broker loses
    is pushed again by the reconciler.

    When broker and state share one Redis (``IDVCANCEL_REDIS_URL``), unsigned messages
    and their index entries go in one script call (``lua/push.lua``). Signed messages
    must go through Celery's serializer, and on RabbitMQ the broker is another server:
    there the entries are written just before the send (a crash in between leaves an
    entry without a message, which the reconciler sends).

    Parameters:
        redis_url: the state store's Redis (and the broker when no other is given).
        settings: signing and, through ``IDVCANCEL_BROKER_URL``, the broker.
        broker_url: the broker, overriding ``settings`` (``amqp://`` for RabbitMQ).
        client: the Redis to push to instead of one for ``redis_url`` (tests pass
            fakeredis).
        clock: the push time written to the intake index.
        check_rules: refuse a request that breaks its provider's rules (``admit``).
            False only for requests the worker must record ``rejected`` rather than a
            caller be told: what the sweep, supersede and the reconciler send (a tracked
            session's cancel, a request admitted before a rule tightened: no one is
            waiting on an exception, and a refusal must not vanish), and the demo's
            deliberately bad cases. The contract is checked either way.
    """

    def __init__(self, redis_url: str, settings: Settings | None = None, *,
                 broker_url: str | None = None, client: redis.Redis | None = None,
                 clock: Callable[[], float] = time.time, check_rules: bool = True) -> None:
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
        self.redis = client if client is not None else redis_client(redis_url, decode=False)
        self._push_script = scripts.script(self.redis, "push")
        self.clock = clock
        self.check_rules = check_rules

    def submit(self, request: CancelRequest | Mapping[str, Any]) -> str:
        """Check and enqueue one request; returns its ``request_id``.

        Raises ``InvalidRequest`` (nothing sent) when it breaks the contract or, with
        ``check_rules``, its provider's rules: ``code`` names the rule, e.g.
        ``reason_required`` for a gu1 cancel without a reason.
        """
        valid = admit(request) if self.check_rules else validate(request)
        if self.signed:
            self._send_through_celery([valid], BATCH_SIZE, None)
        elif self.amqp is not None:
            self._publish([valid], BATCH_SIZE, None)
        else:
            self._push([valid], BATCH_SIZE, None)
        return valid.request_id

    def submit_many(
        self,
        requests: Iterable[CancelRequest | Mapping[str, Any]],
        *,
        batch_size: int = BATCH_SIZE,
        on_sent: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Check every request first (as ``submit`` does), then enqueue them over one
        connection, ``batch_size`` messages per Redis round trip. If any is bad nothing is
        sent: ``InvalidRequests`` lists each bad one, ``index`` its place in ``requests``.

        Parameters:
            requests: mappings or ``CancelRequest`` objects.
            batch_size: messages buffered before one round trip (kombu's
                ``Producer.batch``, kombu 5.7 here; a kombu without it sends each
                message in its own round trip).
            on_sent: called with the number of messages just written, after each batch.

        On RabbitMQ each chunk is published under publisher confirms (``worker.broker.amqp``):
        a chunk counts as sent once the broker confirmed every message of it.

        If the broker fails mid-way the call raises (``redis.ConnectionError``;
        ``worker.broker.amqp.PublishNotConfirmed`` or a connection error on RabbitMQ; kombu's
        ``BatchPublishError`` when messages are signed) and the chunks before it are
        already queued, with their intake index entries (the last of them possibly not
        yet reported to ``on_sent``): submitting the same requests again is safe, because
        a request id is carried out once (a second copy only adds a ``duplicate`` audit
        record).

        Examples:
            >>> producer.submit_many(requests, on_sent=bar.update)  # doctest: +SKIP
            ['r-1', 'r-2']
        """
        valid = _admit_all(enumerate(requests), check_rules=self.check_rules)
        if self.signed:
            self._send_through_celery(valid, batch_size, on_sent)
        elif self.amqp is not None:
            self._publish(valid, batch_size, on_sent)
        else:
            self._push(valid, batch_size, on_sent)
        return [r.request_id for r in valid]

    def _push(self, valid: Sequence[CancelRequest], batch_size: int,
              on_sent: Callable[[int], None] | None) -> None:
        """The protocol-2 entries (``worker.broker.wire``) and their index entries, one
        ``lua/push.lua`` call per chunk (a multi-value LPUSH, a ZADD, an HSET).

        ``LPUSH q a b c`` inserts a, then b, then c at the head: the same order as three
        single pushes, with one reply to parse instead of one per message, and a chunk
        is on the queue, and in the index, whole or not at all.

        The next chunk is encoded while Redis runs the previous one (one call in flight
        on one connection): the script costs Redis ~2.5 ms per 500, about a fifth of what
        the encoding costs here, and without the overlap bulk submission lost that fifth.
        """
        chunks = _chunks(valid, batch_size)
        first = next(chunks, None)
        if first is None:
            return
        if len(first) == len(valid):  # one chunk: nothing to overlap
            self._push_script(keys=_PUSH_KEYS, args=self._push_args(first))
            if on_sent is not None:
                on_sent(len(first))
            return
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        try:
            # EVAL, not EVALSHA: a Redis restarted mid-run has no script cache to miss,
            # and the script's text is nothing beside 500 messages.
            conn.send_command(  # type: ignore[no-untyped-call]
                "EVAL", scripts.source("push"), len(_PUSH_KEYS), *_PUSH_KEYS,
                *self._push_args(first))
            sent = len(first)
            for chunk in chunks:
                args = self._push_args(chunk)
                conn.read_response()
                if on_sent is not None:
                    on_sent(sent)
                conn.send_command(  # type: ignore[no-untyped-call]
                    "EVAL", scripts.source("push"), len(_PUSH_KEYS), *_PUSH_KEYS, *args)
                sent = len(chunk)
            conn.read_response()
            if on_sent is not None:
                on_sent(sent)
        except BaseException:
            # a reply may still be on its way: never reuse this socket
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)

    def _push_args(self, chunk: Sequence[CancelRequest]) -> list[str | int]:
        """``lua/push.lua``'s ARGV for ``chunk``: the count, the queue entries, then the
        ZADD and HSET pairs ready to unpack (building them in Lua cost more)."""
        now = f"{self.clock():.3f}"
        ids = [r.request_id for r in chunk]
        texts = [json.dumps(r.model_dump(mode="json")) for r in chunk]
        args: list[str | int] = [len(chunk)]
        args += map(wire.encode_json, texts, ids)
        for request_id in ids:
            args += (now, request_id)
        for request_id, text in zip(ids, texts, strict=True):
            args += (request_id, text)
        return args

    def _index(self, chunk: Sequence[CancelRequest]) -> None:
        """Write ``chunk`` to the intake index (one MULTI: both keys or neither), before
        the messages are sent through Celery."""
        now = self.clock()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.INTAKE, {r.request_id: now for r in chunk}, nx=True)
        pipe.hset(keys.INTAKE_REQUESTS, mapping={
            r.request_id: json.dumps(r.model_dump(mode="json")) for r in chunk})
        pipe.execute()

    def _send_through_celery(self, valid: Sequence[CancelRequest], batch_size: int,
                             on_sent: Callable[[int], None] | None) -> None:
        with self.app.producer_or_acquire() as producer:
            batch = getattr(producer, "batch", None)
            for chunk in _chunks(valid, batch_size):
                self._index(chunk)
                context = batch(batch_size) if callable(batch) else contextlib.nullcontext()
                with context:  # flushed (one pipeline round trip) on a clean exit
                    for request in chunk:
                        self.app.send_task(
                            TASK_NAME, args=[request.model_dump(mode="json")], queue=QUEUE,
                            producer=producer,
                            headers={wire.REQUEST_ID_HEADER: request.request_id}, **_REPRS)
                if on_sent is not None:
                    on_sent(len(chunk))

    def _publish(self, valid: Sequence[CancelRequest], batch_size: int,
                 on_sent: Callable[[int], None] | None) -> None:
        """RabbitMQ: index entries first (the state Redis), then the chunk under
        publisher confirms."""
        assert self.amqp is not None
        for chunk in _chunks(valid, batch_size):
            self._index(chunk)
            self.amqp.publish([r.model_dump(mode="json") for r in chunk])
            if on_sent is not None:
                on_sent(len(chunk))

    def close(self) -> None:
        if self.amqp is not None:
            self.amqp.close()
        self.app.close()
        self.redis.close()
