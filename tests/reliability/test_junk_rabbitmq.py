"""Junk on the RabbitMQ queue loses nothing and stops nothing (issue 7, part 3).

The Redis side (``test_junk.py``) pushes bytes where kombu expects its envelope. On AMQP
a message always has framing - the broker parses that, not us - so whatever a producer
in any language gets wrong is in the body and in the properties: the content type, the
encoding and the ``application_headers`` Celery reads the task name and id from. The
contract is the same on both brokers: the worker keeps running (the same process carries
a valid request sent after the junk out), and each message ends ``rejected`` on the
record - one result event with ``request_id: null``, the audit trail received ->
rejected -> dead_lettered, and a dead letter holding its body, cut short and escaped.

The messages are published with a plain py-amqp channel to the default exchange, routing
key ``idvcancel``, declaring nothing (the worker declared the queue): what a producer
that ignores our client library would do. Every ``junk.SHAPES`` item's bytes as the body
of a message with a task's headers, and the cases only AMQP can carry (headers of the
wrong types, unknown task names, protocol 1), each on its own; the shapes under four other
framings, a batch per framing (each framing takes one path through Celery, whatever the
body); and a Hypothesis batch of arbitrary bodies, content types, encodings and headers.
Both queues must end empty: a message the worker rejected instead of acking would be
dead-lettered to ``idvcancel.dead`` and answered twice, as each one was before
``worker.broker.consumer.settle``. One worker on one vhost serves the whole module (one per case
would cost minutes on two shared cores); every test starts from empty ``idvcancel:*``
keys, and gets a fresh worker if one died. ``JUNK_SEED`` replays a property run;
``JUNK_EXAMPLES`` sets its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.rabbit import connect, queue_depth
from tests.reliability.conftest import RelStack, close_stack, wait_until
from tests.reliability.junk import MEGABYTE, QUEUE, SHAPES, Junk, junk_items, protocol2_body
from worker.contract import TASK_NAME
from worker.delivery.records import RAW_LIMIT
from worker.local.procs import WorkerProcess
from worker.local.rabbitmq_node import RabbitNode
from worker.local.redis_server import RedisServer
from worker.local.simulator.server import Simulator

#: Items per property run: every branch of the strategies, in seconds against one worker.
JUNK_EXAMPLES = int(os.environ.get("JUNK_EXAMPLES", "150"))
JSON = "application/json"
DEAD_QUEUE = "idvcancel.dead"


def digest(body: bytes) -> str:
    """The task id ``worker.broker.consumer._message_id`` gives a message without an id header."""
    return "raw-" + hashlib.sha256(body).hexdigest()[:32]


@dataclass(frozen=True)
class Item:
    """One AMQP message as a producer would publish it."""

    name: str
    body: bytes
    content_type: str | None = JSON
    #: ``application_headers``; None publishes none at all.
    headers: dict[str, Any] | None = None
    content_encoding: str | None = "utf-8"
    #: ``error.code`` its rejection must carry (None: not pinned).
    code: str | None = None
    #: The request id of a body that is a valid request Celery can still run (the
    #: framing is odd, not wrong): answered under it, whatever the outcome.
    request_id: str | None = None

    @property
    def seen(self) -> bytes | str:
        """The body as the worker gets it: py-amqp decodes it to text when it has a
        content encoding that decodes it (``auto_decode``), else leaves the bytes."""
        if self.content_encoding is None:
            return self.body
        try:
            return self.body.decode(self.content_encoding)
        except Exception:  # noqa: BLE001 - as py-amqp: any failure leaves the bytes
            return self.body

    @property
    def task_id(self) -> str:
        """The id the worker answers it under: its ``id`` header, else the digest of its
        body (text as UTF-8, as ``worker.broker.consumer._message_id`` has it)."""
        task_id = (self.headers or {}).get("id")
        if isinstance(task_id, str) and task_id:
            return task_id
        seen = self.seen
        return digest(seen if isinstance(seen, bytes) else seen.encode("utf-8", "replace"))

    def keys(self) -> set[str]:
        """Every id a result for this message may carry, as task id or request id: the
        worker's name for it (``task_id``); Celery's when it runs the message after all
        (``str()`` of a non-string id, or, for an empty one, ``tasks.process``'s digest
        of the arguments); the request id of a body that holds a request."""
        keys = {self.task_id}
        try:
            body = json.loads(self.body)
        except (ValueError, RecursionError):
            body = None
        ids = [(self.headers or {}).get("id")]
        if isinstance(body, list) and len(body) == 3:  # protocol 2
            args, kwargs = body[0], body[1]
        elif isinstance(body, dict):  # protocol 1: the body names the task and its id
            args, kwargs = body.get("args", ()), body.get("kwargs", {})
            ids.append(body.get("id"))
        else:
            args, kwargs = None, None
        keys |= {str(task_id) for task_id in ids if task_id}
        if isinstance(args, list | tuple) and isinstance(kwargs, dict):
            keys.add("noid-" + hashlib.sha256(repr((tuple(args), kwargs)).encode(
                "utf-8", "replace")).hexdigest()[:32])
            keys |= {arg["request_id"] for arg in args if isinstance(arg, dict)
                     and isinstance(arg.get("request_id"), str) and arg["request_id"]}
        return keys

    def message(self) -> amqp.Message:
        props: dict[str, Any] = {"delivery_mode": 2}
        if self.content_type is not None:
            props["content_type"] = self.content_type
        if self.content_encoding is not None:
            props["content_encoding"] = self.content_encoding
        if self.headers is not None:
            props["application_headers"] = self.headers
        return amqp.Message(self.body, **props)


def publish(url: str, items: list[Item]) -> None:
    """Publish ``items`` to the default exchange, routing key ``idvcancel``, each
    confirmed by the broker before this returns; declares nothing."""
    conn = connect(url, confirm_publish=True)
    try:
        channel = conn.channel()
        for item in items:
            channel.basic_publish(item.message(), exchange="", routing_key=QUEUE)
    finally:
        conn.close()


def task_headers(task_id: str, task: Any = TASK_NAME) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
            "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
            "timelimit": [None, None], "argsrepr": "", "kwargsrepr": "", "origin": "junk"}


def framed(framing: str, shape: Junk) -> Item:
    """``shape``'s bytes as the body of a message framed the ``framing`` way."""
    tid = f"junk-{framing}-{shape.name}"
    if framing == "json_with_task_headers":
        return Item(tid, shape.raw, JSON, task_headers(tid))
    if framing == "no_headers":
        return Item(tid, shape.raw, JSON, None)
    if framing == "headers_without_task":
        return Item(tid, shape.raw, JSON, {"id": tid, "lang": "py"})
    if framing == "unknown_content_type":
        return Item(tid, shape.raw, "application/x-unknown", task_headers(tid))
    assert framing == "no_content_type"
    return Item(tid, shape.raw, None, task_headers(tid), content_encoding=None)


#: The ways to frame a shape's bytes besides the usual one (JSON with a task's headers).
FRAMINGS = ["no_headers", "headers_without_task", "unknown_content_type", "no_content_type"]


def _valid(name: str) -> bytes:
    return protocol2_body(f"junk-amqp-{name}")


#: What only AMQP framing can get wrong, on top of the shapes' bodies.
SPECIAL = [
    pytest.param(Item("huge", b"[" + b"7," * MEGABYTE + b"7]", JSON, task_headers("huge"),
                      code="invalid_task_message"), id="huge_2mb_json_body"),
    pytest.param(Item("huge-bytes", b"\xff" * (2 * MEGABYTE), JSON, None),
                 id="huge_2mb_binary_body_no_headers"),
    pytest.param(Item("utf8", b'[[{"request_id": "\xff\xfe"}], {}, {}]', JSON,
                      task_headers("utf8")), id="invalid_utf8_json_body"),
    pytest.param(Item("unknown", _valid("unknown"), JSON, task_headers("unknown",
                      "idvcancel.no_such_task"), code="unknown_task"),
                 id="valid_body_unknown_task"),
    pytest.param(Item("unknown-junk", b"not json", JSON, task_headers(
        "unknown-junk", "idvcancel.no_such_task"), code="unknown_task"),
                 id="junk_body_unknown_task"),
    pytest.param(Item("task5", _valid("task5"), JSON, {**task_headers("task5"), "task": 5}),
                 id="task_header_an_int"),
    pytest.param(Item("tasklist", _valid("tasklist"), JSON,
                      {**task_headers("tasklist"), "task": ["idvcancel.process"]}),
                 id="task_header_a_list"),
    pytest.param(Item("idlist", _valid("idlist"), JSON,
                      {**task_headers("x"), "id": ["a", 1]}), id="id_header_a_list"),
    pytest.param(Item("id5", _valid("id5"), JSON, {**task_headers("x"), "id": 5},
                      request_id="junk-amqp-id5"), id="id_header_an_int"),
    pytest.param(Item("noid", _valid("noid"), JSON,
                      {k: v for k, v in task_headers("x").items() if k != "id"}),
                 id="valid_body_no_id_header"),
    pytest.param(Item("emptyid", _valid("emptyid"), JSON, {**task_headers("x"), "id": ""},
                      request_id="junk-amqp-emptyid"), id="id_header_empty"),
    pytest.param(Item("tl", _valid("tl"), JSON, {**task_headers("tl"), "timelimit": 5}),
                 id="timelimit_header_an_int"),
    pytest.param(Item("compress", _valid("compress"), JSON,
                      {**task_headers("compress"), "compression": "nope"}),
                 id="unknown_compression_header"),
    pytest.param(Item("pickle", b"\x80\x04K\x01.", "application/x-python-serialize",
                      task_headers("pickle")), id="pickle_content_type"),
    pytest.param(Item("v1", json.dumps({"task": TASK_NAME, "args": 5}).encode(), JSON, None,
                      code="invalid_task_message"),
                 id="protocol1_body_no_headers"),
    pytest.param(Item("v1-unknown", json.dumps({"task": "nope", "id": "v1-unknown"}).encode(),
                      JSON, None), id="protocol1_body_unknown_task"),
    pytest.param(Item("enc", _valid("enc"), JSON, task_headers("enc"),
                      content_encoding="no-such-codec", request_id="junk-amqp-enc"),
                 id="unknown_content_encoding_json_decodes_anyway"),
    pytest.param(Item("binary", _valid("binary"), None, task_headers("binary"),
                      content_encoding="binary"), id="no_content_type_binary_encoding"),
]
CASES = [pytest.param(framed("json_with_task_headers", shape), id=shape.name)
         for shape in SHAPES] + SPECIAL


# -- the module's stack ----------------------------------------------------------------


class Module:
    """The module's one stack (its own vhost) and its current worker."""

    def __init__(self, stack: RelStack, url: str) -> None:
        self.stack = stack
        self.url = url
        self.worker: WorkerProcess | None = None

    def running_worker(self) -> WorkerProcess:
        if self.worker is None or not self.worker.is_running():
            self.worker = self.stack.start_worker(concurrency=4)
        return self.worker


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory,
                 rabbit_node: RabbitNode) -> Iterator[Module]:
    if not rabbit_node.is_running():
        rabbit_node.start()
    vhost = f"junk-{secrets.token_hex(4)}"
    url = rabbit_node.add_vhost(vhost)
    tmp = Path(tmp_path_factory.mktemp("junk-amqp"))
    server = RedisServer(appendonly=True, data_dir=tmp / "redis")
    server.start()
    stack = RelStack(server, Simulator().start(), tmp / "logs", broker_url=url)
    stack.log_dir.mkdir()
    try:
        yield Module(stack, url)
    finally:
        close_stack(stack)
        if rabbit_node.is_running():
            rabbit_node.delete_vhost(vhost)


@pytest.fixture
def junk_rel(module_stack: Module) -> tuple[RelStack, WorkerProcess, str]:
    """The module's stack, emptied, with a running worker; and the broker URL."""
    rel = module_stack.stack
    stale = list(rel.redis.scan_iter("idvcancel:*", count=1000))
    if stale:
        rel.redis.delete(*stale)
    return rel, module_stack.running_worker(), module_stack.url


def died(worker: WorkerProcess) -> str:
    return f"the worker died (exit {worker.returncode}):\n{worker.log_tail(3000)}"


def valid_request_after(rel: RelStack) -> str:
    (valid,) = rel.seeded_requests(1, prefix="after-junk")
    rel.producer.submit(valid)
    return str(valid["request_id"])


def answered(rel: RelStack, item: Item) -> list[dict[str, Any]]:
    """The results given for ``item``: under its request id when it holds a request
    Celery can run, else under the id the worker names it by."""
    if item.request_id is not None:
        return rel.grouped().get(item.request_id, [])
    return [e for e in rel.events() if e["task_id"] == item.task_id]


def problems(rel: RelStack, item: Item) -> list[str]:
    """What is wrong with the answer to ``item`` (nothing: an empty list): one result; for
    junk, a rejection with no request id, the audit trail received -> rejected ->
    dead_lettered and a dead letter holding its body, escaped and cut short."""
    events = answered(rel, item)
    if len(events) != 1:
        return [f"{item.name}: {len(events)} results"]
    if item.request_id is not None:
        return []  # a request carried out (its reference is unknown to the provider)
    (event,) = events
    found = []
    if event["outcome"] != "rejected" or event["request_id"] is not None:
        found.append(f"{item.name}: {event}")
    if item.code is not None and event["error"]["code"] != item.code:
        found.append(f"{item.name}: {event['error']}")
    steps = [r["step"] for r in rel.audit() if r["task_id"] == item.task_id]
    if steps != ["received", "rejected", "dead_lettered"]:
        found.append(f"{item.name}: audit {steps}")
    raw = rel.redis.hget("idvcancel:dlq", f"task:{item.task_id}")
    kept = json.loads(str(raw))["raw"] if raw is not None else ""
    seen = item.seen[:200]
    shown = ascii(seen)[2:-1] if isinstance(seen, bytes) else ascii(seen)[1:-1]
    if len(kept) > RAW_LIMIT or shown not in kept:
        found.append(f"{item.name}: dead letter {kept[:200]!r}")
    return found


def publish_then_check(rel: RelStack, worker: WorkerProcess, url: str,
                       items: list[Item]) -> None:
    """Publish ``items`` then a valid request; assert the worker survived, carried the
    request out, answered each item once as it should, and left both queues empty."""
    pid = worker.pid
    publish(url, items)
    valid_id = valid_request_after(rel)
    wait_until(lambda: not worker.is_running() or (
        valid_id in rel.grouped() and all(answered(rel, item) for item in items)), 60,
        "the junk and the request answered")
    assert worker.is_running() and worker.pid == pid, died(worker)
    assert rel.wait_results([valid_id], 10)[valid_id]["outcome"] == "cancelled"
    found = [problem for item in items for problem in problems(rel, item)]
    assert not found, found
    assert len(rel.events()) == len(items) + 1, [
        (e["task_id"], e["request_id"]) for e in rel.events()]
    assert queue_depth(url, QUEUE) == 0
    assert queue_depth(url, DEAD_QUEUE) == 0
    assert "Unrecoverable error" not in worker.log_text(), died(worker)


# -- hand-picked cases ---------------------------------------------------------------


@pytest.mark.parametrize("item", CASES)
def test_junk_message_ends_rejected_and_the_worker_goes_on(
    junk_rel: tuple[RelStack, WorkerProcess, str], item: Item,
) -> None:
    # Given a running worker
    rel, worker, url = junk_rel
    # When the junk message is published, then a valid request
    # Then the same worker process carries the request out, the junk is answered once,
    # rejected with its audit trail and dead letter, and both queues are empty
    publish_then_check(rel, worker, url, [item])


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_shape_framed_otherwise_ends_rejected(
    junk_rel: tuple[RelStack, WorkerProcess, str], framing: str,
) -> None:
    """All shapes at once: each framing takes one path through Celery whatever the body
    (no headers: the body is decoded for a protocol-1 task name; an unknown content type:
    refused before decoding; none: decoded as text), so one message per shape on its own
    would cost minutes to show what a batch shows."""
    # Given a running worker
    rel, worker, url = junk_rel
    # When every shape's bytes are published, framed the same odd way, then a valid request
    # Then the same worker process carries the request out, and each shape is answered
    # once, rejected with its audit trail and dead letter
    publish_then_check(rel, worker, url, [framed(framing, shape) for shape in SHAPES])


# -- the property --------------------------------------------------------------------

#: Values an AMQP table can carry: py-amqp encodes ints up to 64 bits, and RabbitMQ
#: closes the publisher's channel (541 INTERNAL_ERROR) on an infinite or NaN float, so
#: such a message never reaches a worker.
_text = st.text(max_size=20)
header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
    max_leaves=5,
)
#: Header names Celery and kombu act on, besides arbitrary ones. Not ``eta``/``expires``:
#: a valid date there is Celery's scheduling (held, or expired unanswered by design),
#: not junk; test_poison.py covers the invalid ones.
_names = st.sampled_from(["lang", "compression", "timelimit", "retries", "root_id",
                          "parent_id", "argsrepr", "kwargsrepr", "shadow", "origin",
                          "ignore_result"]) | _text.filter(lambda n: not n.startswith("x-"))
_tasks = st.sampled_from([TASK_NAME, "idvcancel.nope", "", "idvcancel.process "]) | (
    header_values)


def _protocol1(request_id: str, fields: dict[str, Any]) -> bytes:
    """A protocol-1 body (the task named in the body, no headers needed), its arguments
    a request unless ``fields`` replace them."""
    request = json.loads(_valid(request_id))[0]
    return json.dumps({"task": TASK_NAME, "args": request, **fields}).encode()


_protocol1_fields = st.dictionaries(st.sampled_from(["args", "kwargs", "id", "timelimit"]),
                                    header_values, max_size=2)


@st.composite
def messages(draw: st.DrawFn, index: int) -> Item:
    """Any body, a content type and encoding from a small set or none, and headers that
    may lack ``task`` or ``id`` or carry them with the wrong types. Valid request bodies
    and JSON are drawn often enough that some messages are carried out after all."""
    body = draw(st.binary(max_size=200) | junk_items
                | st.builds(_valid, st.uuids().map(str))
                | st.builds(_protocol1, st.uuids().map(str), _protocol1_fields)
                | header_values.map(lambda v: json.dumps(v).encode()))
    content_type = draw(st.sampled_from([
        JSON, JSON, JSON, "application/x-unknown", "text/plain", "application/data",
        "application/x-python-serialize", "application/x-yaml", "", None]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "binary", "latin-1", "nope", None]))
    headers: dict[str, Any] | None = None
    if draw(st.integers(0, 9)):  # one message in ten has no headers table at all
        headers = draw(st.dictionaries(_names, header_values, max_size=3))
        if draw(st.integers(0, 2)):  # mostly ours: the deepest path through Celery
            headers["task"] = TASK_NAME if draw(st.booleans()) else draw(_tasks)
        how = draw(st.sampled_from(["unique", "unique", "none", "wrong"]))
        if how == "unique":
            headers["id"] = f"prop-{index}-{draw(st.uuids())}"
        elif how == "wrong":
            headers["id"] = draw(header_values)
    return Item(f"prop-{index}", body, content_type, headers, encoding)


def generate(count: int, run_seed: int) -> list[Item]:
    """``count`` messages drawn by Hypothesis (generation only: the assertions run on the
    whole batch once it is published), without two that could share an answer (the same
    message twice is answered once, by design): three times as many are drawn to make up."""
    drawn: list[Item] = []

    @seed(run_seed)
    @settings(max_examples=3 * count, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        drawn.append(data.draw(messages(len(drawn))))

    collect()
    taken: set[str] = set()
    items: list[Any] = []
    for item in drawn:
        if not item.keys() & taken and len(items) < count:
            taken |= item.keys()
            items.append(item)
    return items


def test_arbitrary_messages_never_stop_the_worker_and_each_is_answered_once(
    junk_rel: tuple[RelStack, WorkerProcess, str],
) -> None:
    run_seed = int(os.environ.get("JUNK_SEED", random.randrange(2**32)))
    print(f"\nJUNK_SEED={run_seed}")
    # Given a running worker and a batch of arbitrary messages
    rel, worker, url = junk_rel
    pid = worker.pid
    items = generate(JUNK_EXAMPLES, run_seed)
    # When they are all published at once, then a valid request
    publish(url, items)
    valid_id = valid_request_after(rel)

    # Then every message gets exactly one result
    def by_item() -> list[int]:
        seen = [{e["task_id"], e["request_id"]} for e in rel.events()]
        return [sum(bool(keys & item.keys()) for keys in seen) for item in items]

    with contextlib.suppress(AssertionError):  # a timeout: the items are named below
        wait_until(lambda: not worker.is_running() or 0 not in by_item(), 60,
                   "a result for every message")
    assert worker.is_running() and worker.pid == pid, died(worker)
    assert rel.wait_results([valid_id], 10)[valid_id]["outcome"] == "cancelled"
    time.sleep(1.0)  # not an assertion: gives a second answer time to appear
    counts = by_item()
    wrong = [(n, item) for n, item in zip(counts, items, strict=True) if n != 1]
    assert not wrong, f"{len(wrong)} messages without exactly one result: {wrong[:3]}"
    # and no other result: each one without a request id is a rejection
    assert len(rel.events()) == len(items) + 1
    assert {e["outcome"] for e in rel.grouped().get(None, [])} <= {"rejected"}
    # and both queues are empty, the audit chain holds, the worker logged nothing fatal
    assert queue_depth(url, QUEUE) == 0
    assert queue_depth(url, DEAD_QUEUE) == 0
    records = rel.assert_chain_intact()
    assert "Unrecoverable error" not in worker.log_text(), died(worker)
    codes = Counter((e["error"] or {}).get("code", e["outcome"]) for e in rel.events()
                    if e["request_id"] != valid_id)
    print(f"junk on rabbitmq: {len(items)} messages, one result each ({dict(codes)}); "
          f"{records} audit records, chain intact; worker pid unchanged")
