"""Producers end to end, on both brokers: ``Producer.submit_many`` sending a batch, the
documented wire format sent with a plain client (a Redis LPUSH, with and without the
documented intake index commands; an AMQP publish), and the runnable examples in
``docs/examples`` against the stack."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import amqp
import kombu
import pytest

from config.broker import is_amqp
from tests.integration.conftest import Stack, seed
from tests.integration.harness import wait_for

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_submit_many_pipelines_a_batch_that_is_carried_out(stack: Stack) -> None:
    # Given 120 live sessions
    requests = [stack.request() for _ in range(120)]
    stack.sim_client.seed("idpass", [r["reference"] for r in requests], status="new")
    sent: list[int] = []
    # When they are submitted in batches of 50
    ids = stack.producer.submit_many(requests, batch_size=50, on_sent=sent.append)
    # Then progress came per batch and every one is cancelled, once
    assert sent == [50, 50, 20]
    assert ids == [r["request_id"] for r in requests]
    found = stack.results(ids, timeout=60)
    assert {e["outcome"] for e in found.values()} == {"cancelled"}
    assert len(stack.sim_client.calls("idpass", effective=True)) == 120
    # and, all done, none is left in the intake index
    assert stack.redis.zcard("idvcancel:intake") == 0
    assert stack.redis.hlen("idvcancel:intake:requests") == 0


def wire_message(request: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The smallest Celery protocol-2 message the worker takes, as kombu's Redis
    transport stores it: the README's wire-format example."""
    body = [[request], {}, {"callbacks": None, "errbacks": None, "chain": None,
                            "chord": None}]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "idvcancel.process", "id": task_id,
                    "root_id": task_id, "parent_id": None, "group": None, "retries": 0,
                    "eta": None, "expires": None},
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "idvcancel"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def test_a_raw_lpush_of_the_wire_format_is_carried_out(stack: Stack) -> None:
    if is_amqp(stack.broker_url):
        pytest.skip("on RabbitMQ the wire format is an AMQP message: the next test")
    # Given a live session and ID Pass answering 503 once (so the worker's own retry of
    # a message it did not produce is exercised too)
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", fail_next=[503])
    task_id = str(uuid.uuid4())
    # When the documented message is pushed onto the list "idvcancel" with plain Redis
    stack.redis.lpush("idvcancel", json.dumps(wire_message(request, task_id)))
    # Then it is cancelled under that task id, on the second attempt
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 2
    assert event["task_id"] == task_id


def test_a_foreign_push_with_the_documented_index_commands_is_indexed_until_done(
        stack: Stack) -> None:
    if is_amqp(stack.broker_url):
        pytest.skip("the recipe is for producers that LPUSH onto the Redis queue")
    # Given a live session and a provider slow enough to watch the request in flight
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", latency_ms=1500)
    # When a foreign producer pushes the documented message and, in the same MULTI, the
    # two intake index commands of the README
    pipe = stack.redis.pipeline(transaction=True)
    pipe.lpush("idvcancel", json.dumps(wire_message(request, str(uuid.uuid4()))))
    pipe.zadd("idvcancel:intake", {request["request_id"]: time.time()}, nx=True)
    pipe.hset("idvcancel:intake:requests", request["request_id"], json.dumps(request))
    pipe.execute()
    # Then it is in the index while the worker calls the provider
    assert wait_for(lambda: stack.redis.hget(
        f"idvcancel:req:{request['request_id']}", "phase") == "calling", timeout=30)
    assert stack.redis.zscore("idvcancel:intake", request["request_id"]) is not None
    # and leaves it with the step that finishes it
    assert stack.result(request["request_id"])["outcome"] == "cancelled"
    assert stack.redis.zcard("idvcancel:intake") == 0
    assert stack.redis.hlen("idvcancel:intake:requests") == 0


def run_example(stack: Stack, name: str, *args: str, timeout: float = 60
                ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IDVCANCEL_REDIS_URL": stack.redis_url,
           "IDVCANCEL_BROKER_URL": stack.broker_url}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_submit_example_submits_and_follow_example_waits_for_the_results(
        stack: Stack) -> None:
    # Given three live sessions
    references = [str(uuid.uuid4()) for _ in range(3)]
    stack.sim_client.seed("idpass", references, status="opened")
    # When the submit example is run for them
    submitted = run_example(stack, "submit.py", *references)
    # Then it refused its deliberately bad request and printed three request ids
    assert submitted.returncode == 0, submitted.stderr
    assert "refused before sending: provider:" in submitted.stderr
    ids = submitted.stdout.split()
    assert len(ids) == 3 and all(i.startswith("example-") for i in ids)
    # And the follow example, waiting for those ids, prints each outcome and exits
    followed = run_example(stack, "follow_results.py", *ids)
    assert followed.returncode == 0, followed.stderr
    lines = sorted(followed.stdout.splitlines())
    assert lines == sorted(f"{i} cancelled" for i in ids)


def test_a_raw_amqp_publish_of_the_wire_format_is_carried_out(stack: Stack) -> None:
    if not is_amqp(stack.broker_url):
        pytest.skip("on Redis the wire format is one LPUSH: the test above")
    # Given a live session and ID Pass answering 503 once (the worker's own retry of a
    # message it did not produce rides RabbitMQ's delayed delivery)
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", fail_next=[503])
    task_id = str(uuid.uuid4())
    body = [[request], {}, {"callbacks": None, "errbacks": None, "chain": None,
                            "chord": None}]
    # When the README's AMQP message is published with a plain AMQP client, declaring
    # nothing (the queue exists; a declaration would have to match it argument by argument)
    with kombu.Connection(stack.broker_url) as connection:
        channel: Any = connection.default_channel
        channel.basic_publish(
            amqp.Message(json.dumps(body), content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2, correlation_id=task_id,
                         application_headers={"task": "idvcancel.process", "id": task_id}),
            exchange="", routing_key="idvcancel")
    # Then it is cancelled under that task id, on the second attempt
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["attempts"] == 2
    assert event["task_id"] == task_id
