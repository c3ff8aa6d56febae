"""Publishing ``idvcancel.process`` messages to RabbitMQ in batches, under publisher
confirms.

Celery's own producer with ``confirm_publish`` waits for the broker's confirm after
every message: one round trip each. Here a batch is published back to back on a
channel in confirm mode and the call returns once the broker has confirmed every
message of it (``basic.ack``, possibly ``multiple``), so a batch costs one round trip and
a returned call means the quorum queue has the messages (replicated, on disk). A
``basic.nack`` or a lost connection raises: the caller may send the batch again, which is
safe (a request id is carried out once).

The messages are the same protocol-2 messages Celery sends (``worker.broker.wire``); the
queue is declared exactly as the worker declares it (``config.broker``), so messages
published before any worker ever started are kept, not dropped by an unbound exchange.
Signed messages go through Celery (``worker.broker.producer``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import amqp
from kombu import Connection

from config.broker import QUEUE_NAME, amqp_queues
from worker.broker import wire
from worker.errors import PublishNotConfirmed

#: How long one batch may wait for its confirms before the publish is called failed.
CONFIRM_TIMEOUT_SECONDS = 30.0


class AmqpPublisher:
    """One confirmed channel to the broker at ``url``; thread-safe (one batch at a time).

    Parameters:
        url: ``amqp://user:password@host:port/vhost``.
        delivery_limit: the queue's ``x-delivery-limit`` (must match the workers').
    """

    def __init__(self, url: str, delivery_limit: int) -> None:
        self.url = url
        self.delivery_limit = delivery_limit
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._channel: Any = None
        self._published = 0  # delivery tags of this channel are 1, 2, 3, ...
        self._pending: set[int] = set()  # published, not yet confirmed
        self._nacked = False

    # -- connection --------------------------------------------------------------------
    def _open(self) -> Any:
        if self._channel is not None:
            return self._channel
        connection = Connection(self.url, connect_timeout=10)
        connection.connect()
        channel: Any = connection.channel()  # py-amqp's Channel (confirms, events)
        for queue in amqp_queues(self.delivery_limit):
            queue(channel).declare()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self._connection, self._channel = connection, channel
        self._published = 0
        self._pending = set()
        self._nacked = False
        return channel

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        # Confirms may come one by one or for every tag up to this one, in any order.
        if multiple:
            self._pending = {tag for tag in self._pending if tag > delivery_tag}
        else:
            self._pending.discard(delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked = True
        self._on_ack(delivery_tag, multiple)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a connection that may be broken
                connection.release()

    # -- publishing --------------------------------------------------------------------
    def publish(self, requests: Sequence[dict[str, Any]]) -> list[str]:
        """Publish one message per request and wait for the broker's confirms; returns
        the task ids. Reconnects once if the connection had dropped since the last call."""
        with self._lock:
            try:
                return self._publish(requests)
            except (OSError, amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError):
                self._drop()  # a connection the broker closed since: try a fresh one once
                return self._publish(requests)
            except BaseException:
                self._drop()
                raise

    def _publish(self, requests: Sequence[dict[str, Any]]) -> list[str]:
        channel = self._open()
        task_ids = []
        for request in requests:
            task_id = wire.new_task_id()
            message = amqp.Message(
                wire.task_body_json(json.dumps(request)),
                content_type="application/json", content_encoding="utf-8",
                application_headers=wire.amqp_headers(task_id, str(request["request_id"])),
                delivery_mode=2, priority=0, correlation_id=task_id, reply_to="",
            )
            channel.basic_publish(message, exchange=QUEUE_NAME, routing_key=QUEUE_NAME)
            self._published += 1
            self._pending.add(self._published)
            task_ids.append(task_id)
        self._wait_for_confirms(channel)
        return task_ids

    def _wait_for_confirms(self, channel: Any) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        connection = channel.connection
        while self._pending and not self._nacked:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishNotConfirmed(
                    f"the broker did not confirm {len(self._pending)} messages"
                    f" within {CONFIRM_TIMEOUT_SECONDS:g} s")
            connection.drain_events(timeout=left)
        if self._nacked:
            self._nacked = False
            raise PublishNotConfirmed("the broker refused (nacked) a message of the batch")
