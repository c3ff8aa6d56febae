"""The providers' rules, end to end: ``idvcancel submit`` refuses a request that breaks
one (a line naming the rule, exit 2, the real Redis queue untouched); the worker still
rejects one published raw, past the producer, on the record; a request id of whitespace
ends ``rejected`` there too, never dropped; and the sweep and supersede, which send past
the check, have the worker record a tracked session's impossible cancel ``rejected``
instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Stack, new_reference, seed
from tests.integration.harness import send_process, wait_for
from worker import keys
from worker.broker.producer import Producer
from worker.triggers.tracking import TrackedSession, get_session, record

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))
DAY = 86400.0

#: (label, the request's flags, the rule's code, words its line must hold)
REFUSED = [
    ("gu1 without a reason",
     ["--provider", "gu1", "--action", "cancel", "--reference", "v-1"],
     "reason_required", "gu1 requires a reason of at least 5 characters"),
    ("jumio product nope",
     ["--provider", "jumio", "--action", "delete", "--reference", "scan-1",
      "--option", "product=nope"],
     "invalid_options", "invalid jumio delete options: options.product"),
    ("idpass reference not a UUID",
     ["--provider", "idpass", "--action", "cancel", "--reference", "not-a-uuid"],
     "invalid_reference", "idpass references must be a UUID"),
    ("request id of whitespace",
     ["--request-id", "   ", "--provider", "idpass", "--action", "cancel",
      "--reference", str(uuid.uuid4())],
     "invalid_request", "request_id: Value error, must not be only whitespace"),
]


def run_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``idvcancel ARGS`` against ``redis_url`` (broker and state), no other setting."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IDVCANCEL_")}
    env["IDVCANCEL_REDIS_URL"] = redis_url
    return subprocess.run([IDVCANCEL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def good_request(n: int = 1) -> dict[str, Any]:
    return {"request_id": f"good-{n}", "provider": "idpass", "action": "cancel",
            "reference": str(uuid.uuid4()), "requested_by": "tests"}


@pytest.mark.parametrize(("args", "code", "words"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_submit_refuses_a_broken_rule_in_one_line_and_sends_nothing(
        redis_url: str, redis_client: redis.Redis, args: list[str], code: str,
        words: str) -> None:
    """Given a Redis queue holding one good request (no worker takes it)
    When an operator submits a request the worker would reject
    Then idvcancel exits 2 with one line naming the rule, and the queue and the intake
    index still hold only the good one."""
    producer = Producer(redis_url)
    try:
        producer.submit(good_request())
    finally:
        producer.close()
    assert redis_client.llen("idvcancel") == 1
    flags = args if "--request-id" in args else ["--request-id", "r-bad", *args]
    proc = run_cli(redis_url, "submit", *flags, "--requested-by", "ops")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("idvcancel: error: invalid request: "), line
    assert words in line and line.endswith("; nothing was sent"), line
    if code != "invalid_request":
        assert f"(rule {code})" in line, line
    assert proc.stdout == ""
    assert redis_client.llen("idvcancel") == 1
    assert redis_client.zrange(keys.INTAKE, 0, -1) == ["good-1"]


def test_submit_file_names_each_broken_rule_by_line_and_sends_nothing(
        redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    """Given a file of one good request and three that each break a rule
    When it is submitted
    Then each bad line gets its own error line with its number and rule, and not even the
    good line reached the queue."""
    lines = [good_request(), {**good_request(2), "provider": "gu1"},
             {**good_request(3), "provider": "jumio", "action": "delete",
              "reference": "scan-3", "options": {"product": "nope"}},
             {**good_request(4), "reference": "not-a-uuid"}]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    proc = run_cli(redis_url, "submit", "--file", str(path))
    assert proc.returncode == 2, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("idvcancel: error: ") for e in errors)
    assert "line 2: gu1 requires a reason" in errors[0] and "(rule reason_required)" in errors[0]
    assert "line 3: invalid jumio delete options" in errors[1]
    assert "(rule invalid_options)" in errors[1]
    assert "line 4: idpass references must be a UUID" in errors[2]
    assert errors[2].endswith("nothing was sent (3 bad lines)")
    assert redis_client.llen("idvcancel") == 0 and redis_client.zcard(keys.INTAKE) == 0


def test_the_worker_still_rejects_a_broken_rule_published_raw(stack: Stack) -> None:
    """Given an ID Pass cancel whose reference is no UUID, published raw (a producer in
    another language, which checks nothing)
    Then the worker ends it rejected with the rule's code, and calls no one."""
    request = stack.request(reference="not-a-uuid")
    send_process(stack.broker_url, request)
    event = stack.result(request["request_id"])
    assert event["outcome"] == "rejected" and event["attempts"] == 0
    assert event["error"]["code"] == "invalid_reference"
    assert "must be a UUID" in event["error"]["message"]
    assert stack.provider_calls("idpass", "not-a-uuid") == []
    assert [r["step"] for r in stack.audit(request["request_id"])] == ["received", "rejected"]


def test_a_request_id_of_whitespace_ends_rejected_on_the_record(stack: Stack) -> None:
    """Given a request whose id is only spaces, published raw
    Then it is not dropped: one rejected result (no id to give back: keyed by its task
    id) saying what is wrong, its audit records, and a dead letter for a person."""
    request = {**stack.request(), "request_id": "   "}
    seed(stack, "idpass", request["reference"], "new")
    task_id = send_process(stack.broker_url, request)
    (event,) = stack.wait_events(lambda e: e["task_id"] == task_id)
    assert event["outcome"] == "rejected" and event["request_id"] is None
    assert event["error"]["code"] == "invalid_request"
    assert "request_id" in event["error"]["message"]
    assert "whitespace" in event["error"]["message"]
    steps = [r["step"] for r in stack.audit(None) if r.get("task_id") == task_id]
    assert steps == ["received", "rejected", "dead_lettered"]
    assert stack.redis.hexists(keys.DLQ, f"task:{task_id}")
    assert stack.provider_calls("idpass", request["reference"]) == []


def test_the_sweep_records_an_impossible_cancel_rejected(stack: Stack) -> None:
    """Given two abandoned sessions whose cancel breaks a rule (an ID Pass reference that
    is no UUID, a Jumio product that does not exist) and one that is fine
    When the worker runs the sweep task
    Then the sweep does not fail: each ends with a result, the two rejected with their
    rule, the good one cancelled, and all three are out of tracking."""
    idle = time.time() - 8 * DAY
    good = new_reference("idpass")
    seed(stack, "idpass", good, "opened")
    sessions: list[dict[str, Any]] = [
        {"provider": "idpass", "reference": "not-a-uuid", "status": "opened"},
        {"provider": "jumio", "reference": "scan-nope", "status": "PENDING",
         "options": {"product": "nope"}},
        {"provider": "idpass", "reference": good, "status": "opened"},
    ]
    for n, session in enumerate(sessions):
        record(stack.redis, TrackedSession.model_validate(
            {**session, "application_id": f"app-{n}", "last_activity": idle}),
            retention_seconds=3600)
    send_process(stack.broker_url, None, task_name="idvcancel.sweep", args=[])
    events = stack.results(["sweep:idpass:not-a-uuid", "sweep:jumio:scan-nope",
                            f"sweep:idpass:{good}"])
    assert events["sweep:idpass:not-a-uuid"]["error"]["code"] == "invalid_reference"
    assert events["sweep:jumio:scan-nope"]["error"]["code"] == "invalid_options"
    assert events["sweep:idpass:not-a-uuid"]["outcome"] == "rejected"
    assert events["sweep:jumio:scan-nope"]["outcome"] == "rejected"
    assert events[f"sweep:idpass:{good}"]["outcome"] == "cancelled"
    for session in sessions:
        stored = get_session(stack.redis, session["provider"], session["reference"])
        assert stored is not None and stored.state == "closed", session


def test_supersede_records_an_impossible_cancel_rejected(stack: Stack) -> None:
    """Given a Jumio application whose tracked scan names a product that does not exist
    When a new scan is tracked for it (the worker's track task)
    Then the superseded scan's delete ends rejected with the rule, and the new scan is
    tracked: the report did not fail."""
    prior, new = "scan-prior", "scan-new"
    report = {"provider": "jumio", "application_id": "app-j", "status": "PENDING"}
    send_process(stack.broker_url, {**report, "reference": prior,
                                    "options": {"product": "nope"}}, task_name="idvcancel.track")
    wait_for(lambda: stack.redis.zscore(keys.track_active("jumio"), prior) is not None,
             timeout=15, message="prior tracked")
    send_process(stack.broker_url, {**report, "reference": new}, task_name="idvcancel.track")
    event = stack.result(f"supersede:jumio:{prior}")
    assert event["outcome"] == "rejected" and event["source"] == "supersede"
    assert event["error"]["code"] == "invalid_options"
    wait_for(lambda: stack.redis.zscore(keys.track_active("jumio"), new) is not None,
             timeout=15, message="new scan tracked")
    stored = get_session(stack.redis, "jumio", prior)
    assert stored is not None and stored.state == "closed"
