"""Junk on the Redis queue loses nothing and stops nothing (issue 7, part 3).

The README tells producers in any language to ``LPUSH idvcancel '<json>'``, so any bytes
at all can land where kombu expects its envelope. The contract: the worker keeps running
(a valid request sent after the junk is carried out), and each item ends ``rejected`` on
the record - one result event with ``request_id: null``, an audit record and a dead
letter holding its bytes, cut short and escaped.

The items are pushed with a raw ``LPUSH``, as such a producer would: each hand-picked
shape from ``junk.py`` on its own, then a Hypothesis batch of arbitrary ones all at once,
and one item taken by a process that dies before answering it (kombu must hold it
un-acked, wrapped, and hand it to the next worker). One worker serves
the whole module (starting one per shape would cost minutes on two shared cores); every
test starts from empty ``idvcancel:*`` keys and gets a fresh worker if a previous test
killed it. The shapes and the strategy live in ``junk.py`` for other brokers' tests.
``JUNK_SEED`` replays a property run; ``JUNK_EXAMPLES`` sets its size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.reliability.conftest import RelStack, close_stack, open_stack, wait_until
from tests.reliability.junk import QUEUE, SHAPES, Junk, junk_items
from worker.broker.redis_transport import NOT_UTF8, UNREADABLE_CONTENT_TYPE
from worker.delivery.records import RAW_LIMIT
from worker.local.procs import REPO_ROOT, WorkerProcess

#: Items per property run: enough to hit every branch of the strategy, few enough that
#: the run takes seconds against one worker (``JUNK_EXAMPLES=5000`` for a longer hunt).
JUNK_EXAMPLES = int(os.environ.get("JUNK_EXAMPLES", "150"))


class Module:
    """The module's one stack and its current worker."""

    def __init__(self, stack: RelStack) -> None:
        self.stack = stack
        self.worker: WorkerProcess | None = None

    def running_worker(self) -> WorkerProcess:
        if self.worker is None or not self.worker.is_running():
            self.worker = self.stack.start_worker(concurrency=4)
        return self.worker


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    stack = open_stack(Path(tmp_path_factory.mktemp("junk")))
    try:
        yield Module(stack)
    finally:
        close_stack(stack)


@pytest.fixture
def junk_rel(module_stack: Module) -> tuple[RelStack, WorkerProcess]:
    """The module's stack, emptied, with a running worker."""
    rel = module_stack.stack
    stale = list(rel.redis.scan_iter("idvcancel:*", count=1000))
    if stale:
        rel.redis.delete(*stale)
    return rel, module_stack.running_worker()


def died(worker: WorkerProcess) -> str:
    return f"the worker died (exit {worker.returncode}):\n{worker.log_tail(3000)}"


def anonymous(rel: RelStack) -> list[dict[str, Any]]:
    return rel.grouped().get(None, [])


def valid_request_after(rel: RelStack) -> str:
    (valid,) = rel.seeded_requests(1, prefix="after-junk")
    rel.producer.submit(valid)
    return str(valid["request_id"])


def dead_letter(rel: RelStack, task_id: str) -> dict[str, Any]:
    raw = rel.redis.hget("idvcancel:dlq", f"task:{task_id}")
    assert raw is not None, f"no dead letter for task {task_id}"
    entry: dict[str, Any] = json.loads(str(raw))
    return entry


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.name for shape in SHAPES])
def test_junk_ends_rejected_and_the_worker_goes_on(
    junk_rel: tuple[RelStack, WorkerProcess], shape: Junk,
) -> None:
    # Given a running worker
    rel, worker = junk_rel
    pid = worker.pid
    # When the junk is pushed straight onto the queue, then a valid request
    rel.redis.lpush(QUEUE, shape.raw)
    valid_id = valid_request_after(rel)
    # Then the worker is still running and carries the valid request out
    wait_until(lambda: not worker.is_running() or (
        anonymous(rel) and valid_id in rel.grouped()), 30, "the junk and the request answered")
    assert worker.is_running() and worker.pid == pid, died(worker)
    assert rel.wait_results([valid_id], 10)[valid_id]["outcome"] == "cancelled"
    # and the junk has exactly one rejected result, with no request id
    (event,) = anonymous(rel)
    assert event["outcome"] == "rejected"
    assert event["error"]["code"] == shape.redis_code, event["error"]
    if shape.redis_reason is not None:
        assert shape.redis_reason in event["error"]["message"]
    # and an audit record, and a dead letter holding its bytes, escaped and cut short
    steps = [r["step"] for r in rel.audit() if r["task_id"] == event["task_id"]]
    assert steps == ["received", "rejected", "dead_lettered"]
    kept = dead_letter(rel, event["task_id"])["raw"]
    assert len(kept) <= RAW_LIMIT
    assert ascii(shape.shown[:200])[2:-1] in kept, kept[:300]
    # and nothing is left un-acked to come back after the visibility timeout
    wait_until(lambda: rel.redis.hlen("unacked") == 0, 10, "the junk acked")
    assert "Unrecoverable error" not in worker.log_text(), died(worker)


#: Takes one item off the queue through the checked transport, the way the worker does
#: (un-acked, awaiting its answer), and dies on the spot: no ack, no restore at shutdown.
POP_AND_DIE = """
import os, sys, kombu
conn = kombu.Connection(sys.argv[1], transport="worker.broker.redis_transport:Transport")
message = conn.default_channel.basic_get("idvcancel", no_ack=False)
print(message.content_type, flush=True)
os._exit(0)
"""


def test_junk_taken_by_a_worker_that_dies_comes_back_and_is_answered(
    module_stack: Module,
) -> None:
    # Given junk on the queue and no worker
    rel = module_stack.stack
    if module_stack.worker is not None:
        module_stack.worker.stop(timeout=10)
    stale = list(rel.redis.scan_iter("idvcancel:*", count=1000))
    if stale:
        rel.redis.delete(*stale)
    raw = b"\xff not json, and not UTF-8 either"
    rel.redis.lpush(QUEUE, raw)
    # When a process takes it and dies before answering it
    popped = subprocess.run([sys.executable, "-c", POP_AND_DIE, rel.redis_url], check=True,
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert popped.stdout.strip() == UNREADABLE_CONTENT_TYPE
    # Then it was not lost: kombu holds it as un-acked, wrapped
    assert rel.redis.llen(QUEUE) == 0
    assert rel.redis.hlen("unacked") == 1
    # and a worker, after the visibility timeout, answers it once, with its bytes
    worker = module_stack.running_worker()
    wait_until(lambda: anonymous(rel), 60, "the restored junk answered")
    time.sleep(0.5)  # not an assertion: gives a second answer time to appear
    (event,) = anonymous(rel)
    assert event["error"]["code"] == "unreadable_envelope"
    assert NOT_UTF8 in event["error"]["message"]
    assert ascii(raw)[2:-1] in dead_letter(rel, event["task_id"])["raw"]
    wait_until(lambda: rel.redis.hlen("unacked") == 0, 10, "the junk acked")
    assert worker.is_running(), died(worker)


# -- the property --------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "raw-" + hashlib.sha256(data).hexdigest()[:32]


def message_ids(raw: bytes) -> set[str]:
    """Every task id the worker may give this item: the digest of the item (the
    transport wrapped it), or, for a readable envelope, what ``worker.broker.consumer`` names a
    message by - its ``id`` header, else the digest of its decoded body."""
    ids = {_digest(raw)}
    try:
        payload = json.loads(raw)
    except ValueError:  # also: invalid UTF-8
        return ids
    if not isinstance(payload, dict):
        return ids
    headers = payload.get("headers")
    if isinstance(headers, dict) and isinstance(headers.get("id"), str) and headers["id"]:
        ids.add(headers["id"])
    body = payload.get("body")
    properties = payload.get("properties")
    if isinstance(body, str) and isinstance(properties, dict):
        try:
            data = (base64.b64decode(body.encode("utf-8", "surrogatepass"))
                    if properties.get("body_encoding") == "base64" and body
                    else body.encode("utf-8", "replace"))
        except (binascii.Error, ValueError):
            return ids
        ids.add(_digest(data))
    return ids


def generate(count: int, run_seed: int) -> list[bytes]:
    """``count`` junk items drawn by Hypothesis (generation only: the assertions run on
    the whole batch once it is on the queue), without two that could share an id."""
    drawn: list[bytes] = []

    @seed(run_seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(junk_items)
    def collect(item: bytes) -> None:
        drawn.append(item)

    collect()
    taken: set[str] = set()
    items = []
    for item in drawn:
        ids = message_ids(item)
        if not ids & taken:  # the same message twice is answered once, by design
            taken |= ids
            items.append(item)
    return items


def test_arbitrary_junk_never_stops_the_worker_and_each_item_is_answered_once(
    junk_rel: tuple[RelStack, WorkerProcess],
) -> None:
    run_seed = int(os.environ.get("JUNK_SEED", random.randrange(2**32)))
    print(f"\nJUNK_SEED={run_seed}")
    # Given a running worker and a batch of arbitrary junk
    rel, worker = junk_rel
    pid = worker.pid
    items = generate(JUNK_EXAMPLES, run_seed)
    # When it is all pushed at once, then a valid request
    rel.redis.lpush(QUEUE, *items)
    valid_id = valid_request_after(rel)

    # Then every item gets exactly one result
    def by_item() -> list[int]:
        seen = Counter(e["task_id"] for e in rel.events())
        return [sum(seen[i] for i in message_ids(item)) for item in items]

    wait_until(lambda: not worker.is_running() or 0 not in by_item(), 60,
               "a result for every item")
    assert worker.is_running() and worker.pid == pid, died(worker)
    assert rel.wait_results([valid_id], 10)[valid_id]["outcome"] == "cancelled"
    counts = by_item()
    wrong = [(n, item[:80]) for n, item in zip(counts, items, strict=True) if n != 1]
    assert not wrong, f"items without exactly one result: {wrong[:5]}"
    # and no other result: each one without a request id is a rejection
    assert len(rel.events()) == len(items) + 1
    assert {e["outcome"] for e in anonymous(rel)} == {"rejected"}
    # and the audit chain holds, and the worker never logged a fatal error
    records = rel.assert_chain_intact()
    assert "Unrecoverable error" not in worker.log_text(), died(worker)
    codes = Counter(e["error"]["code"] for e in anonymous(rel))
    print(f"junk: {len(items)} items, one result each ({dict(codes)}); "
          f"{records} audit records, chain intact; worker pid unchanged")
