"""``worker.broker.consumer.RecordingConsumer``: each message Celery cannot hand to a task is
answered once and then acked, never rejected.

Why acked: on RabbitMQ a rejected message goes to the quorum queue's dead-letter
exchange, which the worker consumes and answers as given up by the broker - a second
answer for one message (found by ``tests/reliability/test_junk_rabbitmq.py``). And a
protocol-1 body whose arguments Celery cannot call must be answered before Celery's
tracer swallows the failure. The consumer is built without a broker: its task handler
only needs the strategies and a few attributes, and a message only a channel that
records what was done with it. The end-to-end proofs are the reliability junk tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from celery import Celery
from kombu.message import Message

from worker.broker import consumer as wc
from worker.contract import TASK_NAME

JSON = "application/json"


class Channel:
    """Records acks and rejects the way a broker channel would receive them."""

    no_ack_consumers = None

    def __init__(self) -> None:
        self.done: list[str] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.done.append("ack")

    def basic_reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self.done.append("reject, requeue" if requeue else "reject")


def message(body: Any, headers: dict[str, Any] | None = None,
            content_type: str = JSON) -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(body=cast("str", raw),  # kombu types body as str; bytes is what it carries
                   delivery_tag="1", content_type=content_type,
                   content_encoding="utf-8", headers=headers, channel=Channel(),
                   delivery_info={"exchange": "", "routing_key": "idvcancel"},
                   accept={JSON})


def headers(task: Any = TASK_NAME, **extra: Any) -> dict[str, Any]:
    return {"task": task, "id": "t-1", "lang": "py", **extra}


Strategy = Callable[..., Any]


def handler(strategy: Strategy) -> Callable[[Message], Any]:
    """The consumer's task handler, with ``strategy`` as the one for ``idvcancel.process``."""
    consumer: Any = wc.RecordingConsumer.__new__(wc.RecordingConsumer)
    consumer.app = Celery("unit-consumer", set_as_current=False)
    consumer.strategies = {TASK_NAME: strategy}
    consumer.connection_errors = ()
    consumer.event_dispatcher = None
    consumer.on_task_message = set()
    consumer._maximum_prefetch_restored = True
    consumer.restart_count = 0
    created: Callable[[Message], Any] = consumer.create_task_handler()
    return created


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(task id, error code) of each answer the consumer records (no Redis here)."""
    answers: list[tuple[str, str]] = []
    monkeypatch.setattr(wc, "record_unreadable", lambda m, code, text: answers.append(
        (wc._message_id(m), code)))
    return answers


def runs(message: Message, payload: Any, *args: Any) -> None:
    """A strategy that hands the message to the pool (nothing to record here)."""


def decodes(message: Message, payload: Any, *args: Any) -> None:
    """Celery's strategy decodes a protocol-2 body, refusing an unaccepted content type."""
    message.payload  # noqa: B018 - the decode is the point


def breaks(message: Message, payload: Any, *args: Any) -> None:
    raise TypeError("Celery's unpacking of a malformed message")


REFUSED = [
    pytest.param(message([[], {}, {}], headers("idvcancel.nope")), runs, "unknown_task",
                 id="unknown_task"),
    pytest.param(message(b"not json", headers("idvcancel.nope")), runs, "unknown_task",
                 id="unknown_task_undecodable_body"),
    pytest.param(message({"no": "task"}), runs, "unknown_message", id="no_task_anywhere"),
    pytest.param(message([[], {}, {}], headers(), "application/x-unknown"), decodes,
                 "invalid_task_message", id="content_type_not_accepted"),
    pytest.param(message([[], {}, {}], headers(timelimit=5)), runs, "invalid_task_message",
                 id="timelimit_not_a_pair"),
    pytest.param(message([[], {}, {}], headers()), breaks, "invalid_task_message",
                 id="celery_raises"),
    pytest.param(message({"task": TASK_NAME, "args": 5}), runs, "invalid_task_message",
                 id="protocol1_args_not_a_list"),
]


@pytest.mark.parametrize(("msg", "strategy", "code"), REFUSED)
def test_a_refused_message_is_answered_once_and_acked_not_rejected(
    recorded: list[tuple[str, str]], msg: Message, strategy: Strategy, code: str,
) -> None:
    # Given a message Celery cannot hand to the task
    # When the consumer takes it
    handler(strategy)(msg)
    # Then it is answered once, under the id the worker names it by
    assert recorded == [(wc._message_id(msg), code)]
    # and acked: a reject would dead-letter it on RabbitMQ, to be answered again
    assert cast("Channel", msg.channel).done == ["ack"]


@pytest.mark.parametrize(("body", "problem"), [
    ({"task": TASK_NAME, "args": 5}, "the task arguments are not a list"),
    ({"task": TASK_NAME, "args": "abc"}, "the task arguments are not a list"),
    ({"task": TASK_NAME, "kwargs": [1]}, "the task keyword arguments are not an object"),
    ({"task": TASK_NAME, "kwargs": {"self": 1}}, "the task keyword arguments are not"),
    ({"task": TASK_NAME, "args": [], "timelimit": 5}, "the timelimit field is not a pair"),
    ({"task": TASK_NAME}, None),  # Celery's defaults: no arguments; intake answers it
    ({"task": TASK_NAME, "args": [{"request_id": "r"}], "kwargs": {}}, None),
    ({"task": "idvcancel.nope", "args": 5}, None),  # not ours: an unknown task
    ([1, 2, 3], None),  # not a protocol-1 body: an unknown message
])
def test_a_protocol1_body_celery_could_not_call_is_named(body: Any,
                                                         problem: str | None) -> None:
    # Given a message without a task header, its body an object naming the task
    msg = message(body)
    # When its shape is checked
    found = wc.shape_problem(msg)
    # Then a body Celery would unpack but fail to call (and ack, unanswered) is named
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_a_callable_protocol1_message_goes_to_celery(recorded: list[tuple[str, str]]) -> None:
    # Given a protocol-1 message Celery can call
    msg = message({"task": TASK_NAME, "id": "p1", "args": [{"request_id": "r"}]})
    taken: list[Message] = []
    # When the consumer takes it
    handler(lambda m, payload, *args: taken.append(m))(msg)
    # Then Celery's strategy has it, and nothing is recorded, acked or rejected here
    assert taken == [msg] and recorded == [] and cast("Channel", msg.channel).done == []


def test_a_requeue_by_celery_stays_a_requeue() -> None:
    # Given an answered message as Celery's own handlers see it
    msg = message([[], {}, {}], headers())
    seen = wc._AckInsteadOfReject(msg, ())
    # When Celery puts it back on the queue rather than dropping it
    seen.reject_log_error(wc.logger, (), requeue=True)
    # Then it is requeued (unanswered: not ours to change), and reads as the message
    assert cast("Channel", msg.channel).done == ["reject, requeue"]
    assert seen.headers == msg.headers and seen.acknowledged
