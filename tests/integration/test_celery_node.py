"""Another language enqueues: Node's ``celery-node`` (task protocol 2), on the Redis
broker and on RabbitMQ, sends ``idvcancel.process`` with the request as its one
positional argument to queue ``idvcancel``, and the Python worker carries it out.

celery-node sends only the ``lang``, ``task`` and ``id`` headers and camelCase
``correlationId`` / ``replyTo`` properties; the worker needs no more than that, and its
own retries (a new message it publishes itself) work for such a message too.
``node_modules`` is installed here on first use (``npm install``); the test is skipped
only on a machine without ``node``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, seed

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True


@pytest.fixture(scope="module")
def celery_node() -> Path:
    """The enqueue script, with ``celery-node`` installed beside it."""
    if not (NODE_DIR / "node_modules" / "celery-node").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: cannot install celery-node"
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=300)
    return NODE_DIR / "enqueue.js"


def enqueue(script: Path, stack: Stack, request: dict[str, object]) -> str:
    assert NODE is not None
    proc = subprocess.run([NODE, str(script), stack.broker_url, stack.redis_url,
                           json.dumps(request)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_request_sent_from_node_is_cancelled(celery_node: Path, stack: Stack) -> None:
    # Given a new ID Pass session
    request = stack.request(reason="sent from node")
    seed(stack, "idpass", request["reference"], "new")
    # When a Node service enqueues its cancel with celery-node
    task_id = enqueue(celery_node, stack, request)
    # Then the worker cancels it once, under celery-node's task id
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["fee_refunded"] is True
    assert event["task_id"] == task_id and event["source"] == "api"
    assert len(stack.sim_client.calls("idpass", request["reference"], effective=True)) == 1
    assert [r["step"] for r in stack.audit(request["request_id"])] == [
        "received", "attempt", "completed"]


def test_a_node_request_survives_a_retry(celery_node: Path, stack: Stack) -> None:
    # Given ID Pass answers 503 once
    request = stack.request()
    seed(stack, "idpass", request["reference"], "opened")
    stack.sim_client.set_faults("idpass", fail_next=[503])
    # When the cancel comes from Node
    enqueue(celery_node, stack, request)
    # Then the worker's retry of celery-node's sparse message works: cancelled on attempt 2
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 2
