"""Dead letters end to end: a request fails for real (provider down, credentials refused),
the cause is fixed, ``idvcancel dlq replay`` sends it again and it ends well, audited.

The edge cases of ``worker.ops.deadletters.replay`` (an interrupted replay, a stale entry,
an unreadable message, a request in flight) run against the stack's real Redis too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process
from tests.integration.test_cli_e2e import json_lines, one_line_error, run_cli
from worker.contract import CancelRequest
from worker.errors import NotReplayable
from worker.gate import breaker
from worker.keys import request_ledger
from worker.ops import deadletters

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True


class RecordingProducer:
    """A producer that only records what a replay would send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def submit(self, request: CancelRequest | Mapping[str, Any]) -> str:
        self.sent.append(dict(request))
        return str(dict(request)["request_id"])


def has_id(request_id: str, event: dict[str, Any]) -> bool:
    return bool(event["request_id"] == request_id)


def failed_request(stack: Stack, **fields: Any) -> dict[str, Any]:
    """A request that ended ``failed`` (ID Pass down) and is dead-lettered; ID Pass is
    back up when this returns, and its circuit breaker closed (as it would be by the
    time a person replays: the outage is over)."""
    request = stack.request(**fields)
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.set_faults("idpass", down=True)
    stack.producer.submit(request)
    assert stack.result(request["request_id"], settle=0)["outcome"] == "failed"
    stack.sim_client.set_faults("idpass")
    stack.redis.delete(breaker.key("idpass"))
    assert stack.redis.hexists("idvcancel:dlq", request["request_id"])
    return request


def test_replay_after_an_outage_ends_cancelled_once(stack: Stack) -> None:
    # Given a request that failed while ID Pass was down, which is back now
    request = failed_request(stack, reason="applicant withdrew")
    rid = request["request_id"]
    # When the operator replays it
    proc = run_cli(stack, "dlq", "replay", rid)
    # Then the replay is reported, and the request ends cancelled with a new result event
    assert proc.returncode == 0, proc.stderr
    (reported,) = json_lines(proc.stdout)
    assert reported == {"id": rid, "status": "replayed", "reset": True, "replays": 1,
                        "detail": ""}
    events = stack.wait_events(lambda e: e["request_id"] == rid, count=2)
    assert [e["outcome"] for e in events] == ["failed", "cancelled"]
    assert events[1]["attempts"] == 1 and events[1]["fee_refunded"] is True
    # And the provider saw exactly one cancel that took effect
    assert len(stack.sim_client.calls("idpass", request["reference"], effective=True)) == 1
    assert stack.sim_client.status("idpass", request["reference"]) == "cancelled"
    # And the dead letter is gone
    assert not stack.redis.hexists("idvcancel:dlq", rid)
    assert stack.redis.zscore("idvcancel:dlq:index", rid) is None
    # And the audit trail tells the story, on an intact chain
    steps = [r["step"] for r in stack.audit(rid)]
    assert steps[steps.index("dead_lettered"):] == [
        "dead_lettered", "replayed", "attempt", "completed"]
    replayed = next(r for r in stack.audit(rid) if r["step"] == "replayed")
    assert replayed["replay"] == 1 and replayed["previous_outcome"] == "failed"
    assert replayed["reason"] == "applicant withdrew" and replayed["task_id"] is None
    stack.assert_chain_intact()
    # And status shows the ledger done, replayed once
    shown = json.loads(run_cli(stack, "status", rid).stdout)
    assert shown["ledger"]["phase"] == "done" and shown["ledger"]["replays"] == 1
    assert shown["ledger"]["outcome"] == "cancelled"


def test_replay_after_credentials_are_fixed(stack: Stack) -> None:
    # Given a request refused with 401, then the credential is fixed
    request = stack.request()
    seed(stack, "idpass", request["reference"], "opened")
    stack.sim_client.set_faults("idpass", fail_next=[401])
    stack.producer.submit(request)
    assert stack.result(request["request_id"])["outcome"] == "unauthorized"
    # When it is replayed
    assert run_cli(stack, "dlq", "replay", request["request_id"]).returncode == 0
    # Then it ends cancelled
    (_, second) = stack.wait_events(lambda e: e["request_id"] == request["request_id"], 2)
    assert second["outcome"] == "cancelled"


def test_replay_that_fails_again_keeps_a_fresh_dead_letter(stack: Stack) -> None:
    # Given a failed request, replayed while its credential is still refused
    request = failed_request(stack)
    rid = request["request_id"]
    stack.sim_client.set_faults("idpass", fail_next=[401])
    # When it is replayed
    assert run_cli(stack, "dlq", "replay", rid).returncode == 0
    # Then it ends unauthorized after one attempt (the budget started again), and is
    # dead-lettered again: the replay did not delete the worker's fresh entry
    events = stack.wait_events(lambda e: e["request_id"] == rid, count=2)
    assert [e["outcome"] for e in events] == ["failed", "unauthorized"]
    assert events[1]["attempts"] == 1
    entry = deadletters.get(stack.redis, rid)
    assert entry is not None and entry["task_id"] == events[1]["task_id"]
    # And a second replay, once ID Pass is back, cancels it
    stack.sim_client.set_faults("idpass")
    assert json_lines(run_cli(stack, "dlq", "replay", rid).stdout)[0]["replays"] == 2
    events = stack.wait_events(lambda e: e["request_id"] == rid, count=3)
    assert events[2]["outcome"] == "cancelled"
    stack.assert_chain_intact()


def test_replay_all_replays_requests_and_skips_unreadable_messages(stack: Stack) -> None:
    # Given two failed requests and one message with no readable request id
    first, second = failed_request(stack), failed_request(stack)
    send_process(stack.broker_url, None, args=[1, 2, 3])
    stack.wait_events(lambda e: e["request_id"] is None)
    # When everything is replayed
    proc = run_cli(stack, "dlq", "replay", "--all")
    # Then the two requests are replayed and cancelled, the message is skipped and kept
    assert proc.returncode == 0, proc.stderr
    reported = {r["id"]: r["status"] for r in json_lines(proc.stdout)}
    task_ids = [i for i in reported if i.startswith("task:")]
    assert reported == {first["request_id"]: "replayed", second["request_id"]: "replayed",
                        task_ids[0]: "skipped"}
    for rid in (first["request_id"], second["request_id"]):
        events = stack.wait_events(partial(has_id, rid), count=2)
        assert events[-1]["outcome"] == "cancelled"
    assert [e["id"] for e in deadletters.list_entries(stack.redis)] == task_ids


def test_unreadable_message_is_not_replayable(stack: Stack) -> None:
    # Given the dead letter of a message with no readable request
    send_process(stack.broker_url, None, args=[], kwargs={"what": "no request"})
    stack.wait_events(lambda e: e["request_id"] is None)
    (entry,) = deadletters.list_entries(stack.redis)
    # When it is replayed
    proc = run_cli(stack, "dlq", "replay", entry["id"])
    # Then it is refused with a clear one-line error, and kept
    assert proc.returncode == 2
    assert "unreadable message, not a request" in one_line_error(proc)
    assert deadletters.get(stack.redis, entry["id"]) is not None


def test_replaying_an_unknown_id_exits_1(stack: Stack) -> None:
    proc = run_cli(stack, "dlq", "replay", "no-such-entry")
    assert proc.returncode == 1
    assert "no dead letter with id 'no-such-entry'" in one_line_error(proc)


def test_an_interrupted_replay_does_not_reset_twice(stack: Stack) -> None:
    # Given a replay that reset the ledger and then died before enqueueing
    request = failed_request(stack)
    rid = request["request_id"]
    stack.redis.hset(request_ledger(rid), mapping={"phase": "waiting", "replays": "1"})
    # When it is replayed again (the worker is not involved: a recording producer)
    producer = RecordingProducer()
    result = deadletters.replay(stack.redis, producer, rid)
    # Then the reset is skipped, the request is sent and the entry removed
    assert result.status == "replayed" and result.reset is False and result.replays == 1
    assert [r["request_id"] for r in producer.sent] == [rid]
    assert deadletters.get(stack.redis, rid) is None
    assert "replayed" not in [r["step"] for r in stack.audit(rid)]


def test_a_stale_entry_of_a_request_that_since_succeeded_is_cleared(stack: Stack) -> None:
    # Given a dead letter whose request has since been cancelled (a replay that died
    # after enqueueing, before removing the entry)
    request = failed_request(stack)
    rid = request["request_id"]
    stack.redis.hset(request_ledger(rid), mapping={"phase": "done", "outcome": "cancelled"})
    producer = RecordingProducer()
    # When it is replayed
    result = deadletters.replay(stack.redis, producer, rid)
    # Then nothing is sent, the entry is cleared and the ledger left alone
    assert result.status == "already_done" and producer.sent == []
    assert deadletters.get(stack.redis, rid) is None
    assert stack.redis.hget(request_ledger(rid), "outcome") == "cancelled"


def test_a_request_in_flight_is_not_replayed(stack: Stack) -> None:
    request = failed_request(stack)
    rid = request["request_id"]
    stack.redis.hset(request_ledger(rid), "phase", "calling")
    producer = RecordingProducer()
    with pytest.raises(NotReplayable, match="phase calling"):
        deadletters.replay(stack.redis, producer, rid)
    assert producer.sent == [] and deadletters.get(stack.redis, rid) is not None


def test_an_entry_rewritten_during_the_replay_is_kept(stack: Stack) -> None:
    # Given a producer during whose send the worker dead-letters the request again
    request = failed_request(stack)
    rid = request["request_id"]

    class RacingProducer(RecordingProducer):
        def submit(self, request: CancelRequest | Mapping[str, Any]) -> str:
            entry = {**(deadletters.get(stack.redis, rid) or {}), "task_id": "fresh"}
            stack.redis.hset("idvcancel:dlq", rid, json.dumps(entry))
            return super().submit(request)

    # When it is replayed
    deadletters.replay(stack.redis, RacingProducer(), rid)
    # Then the fresh entry is not deleted by the replay that read the old one
    fresh = deadletters.get(stack.redis, rid)
    assert fresh is not None and fresh["task_id"] == "fresh"
