"""``idvcancel`` end to end: each command run as a subprocess against the stack (real
Redis, a real worker, the simulator), asserting what an operator or a script sees:
stdout, one-line errors on stderr, and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, new_reference, seed

#: Run on the Redis broker and on RabbitMQ (tests/integration/conftest.py).
BOTH_BROKERS = True

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))

COMMANDS = [
    [], ["schema"], ["worker"], ["beat"], ["demo"], ["simulate"], ["submit"], ["results"],
    ["status"], ["dlq"], ["dlq", "list"], ["dlq", "replay"], ["sweep"], ["audit"],
    ["audit", "verify"], ["audit", "checkpoint"], ["audit", "public-key"], ["receipt"],
    ["receipt", "show"], ["receipt", "verify"], ["attention"], ["attention", "list"],
    ["attention", "forget"],
]


def run_cli(stack: Stack, *args: str, timeout: float = 60, input_text: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run ``idvcancel ARGS`` with ``IDVCANCEL_REDIS_URL`` pointing at the stack."""
    env = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url}
    return subprocess.run([IDVCANCEL, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=input_text, check=False)


def start_cli(stack: Stack, *args: str) -> subprocess.Popen[str]:
    """Start ``idvcancel ARGS`` in the background, stderr merged into stdout."""
    env = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url}
    return subprocess.Popen([IDVCANCEL, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The output lines of ``proc`` as they come, read by a thread (no test hangs on a
    process that prints nothing: ``get(timeout=...)`` raises ``queue.Empty``)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], contains: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if contains in line:
            return line
        seen.append(line)
    raise AssertionError(f"no line with {contains!r} in {timeout} s; got {seen}")


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``idvcancel: error: ...`` line a failing command prints on stderr."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("idvcancel: error: "), proc.stderr
    return lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def flags(request: dict[str, Any]) -> list[str]:
    return [part for name, value in request.items()
            for part in (f"--{name.replace('_', '-')}", str(value))]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "idvcancel")
def test_every_command_has_help(stack: Stack, command: list[str]) -> None:
    # When --help is asked of any command
    proc = run_cli(stack, *command, "--help")
    # Then it prints its usage and exits 0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: idvcancel")


def test_schema_prints_the_contract(stack: Stack) -> None:
    proc = run_cli(stack, "schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["task"]["name"] == "idvcancel.process"
    assert "cancelled" in schema["outcomes"]


def test_unknown_option_is_a_one_line_usage_error(stack: Stack) -> None:
    proc = run_cli(stack, "submit", "--bogus", "1")
    assert proc.returncode == 2
    assert "--bogus" in one_line_error(proc)


def test_submit_with_flags_is_carried_out(stack: Stack) -> None:
    # Given a live ID Pass session
    request = stack.request(reason="duplicate application")
    seed(stack, "idpass", request["reference"], "new")
    # When an operator submits its cancel with flags
    proc = run_cli(stack, "submit", *flags(request), "--source", "manual")
    # Then the request id is printed and the session ends cancelled
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == request["request_id"]
    event = stack.result(request["request_id"])
    assert event["outcome"] == "cancelled" and event["source"] == "manual"


def test_submit_parses_option_values_as_json_when_they_are_json(stack: Stack) -> None:
    # Given a OneSpan transaction to erase with a grace period
    request = stack.request("onespan", "delete")
    seed(stack, "onespan", request["reference"], "completed")
    # When it is submitted with --option grace_period=3 (a number, not the text "3")
    proc = run_cli(stack, "submit", *flags(request), "--option", "grace_period=3")
    assert proc.returncode == 0, proc.stderr
    # Then the provider received the number
    assert stack.result(request["request_id"])["outcome"] == "deleted"
    (call,) = stack.provider_calls("onespan", request["reference"])
    assert call["body"]["grace_period"] == 3


def test_submit_refuses_an_invalid_request_naming_the_field(stack: Stack) -> None:
    # When a request without a reference is submitted
    request = stack.request()
    del request["reference"]
    proc = run_cli(stack, "submit", *flags(request))
    # Then it exits 2 with one line naming the field, and nothing reaches the worker
    assert proc.returncode == 2
    assert "reference: Field required" in one_line_error(proc)
    time.sleep(0.5)
    assert stack.events() == [] and stack.redis.llen("idvcancel") == 0


def test_submit_refuses_a_malformed_option(stack: Stack) -> None:
    proc = run_cli(stack, "submit", *flags(stack.request()), "--option", "product")
    assert proc.returncode == 2
    assert "key=value" in one_line_error(proc)


def test_submit_file_sends_every_line(stack: Stack, tmp_path: Path) -> None:
    # Given a JSON Lines file of three cancels (and a blank line)
    requests = [stack.request() for _ in range(3)]
    for request in requests:
        seed(stack, "idpass", request["reference"], "opened")
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([json.dumps(requests[0]), "", *map(json.dumps, requests[1:])]))
    # When it is submitted
    proc = run_cli(stack, "submit", "--file", str(path))
    # Then all three are carried out, and the progress went to stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "submitted 3 requests"
    assert "submitting" in proc.stderr
    found = stack.results([r["request_id"] for r in requests])
    assert {e["outcome"] for e in found.values()} == {"cancelled"}


def test_submit_file_with_a_bad_line_sends_nothing(stack: Stack, tmp_path: Path) -> None:
    # Given a file whose third line has an unknown provider
    good = stack.request()
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([json.dumps(good), json.dumps(stack.request()),
                               json.dumps({**stack.request(), "provider": "acme"})]))
    # When it is submitted
    proc = run_cli(stack, "submit", "--file", str(path))
    # Then it exits 2 naming the line and the field, and not even the good lines went out
    assert proc.returncode == 2
    error = one_line_error(proc)
    assert "line 3" in error and "provider" in error and "nothing was sent" in error
    time.sleep(0.5)
    assert stack.events() == [] and stack.redis.llen("idvcancel") == 0


def test_submit_file_reports_every_bad_line_then_sends_nothing(stack: Stack,
                                                              tmp_path: Path) -> None:
    # Given a file whose lines 2 and 3 are bad (broken JSON, an unknown provider)
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([json.dumps(stack.request()), "{not json",
                               json.dumps({**stack.request(), "provider": "acme"})]))
    # When it is submitted
    proc = run_cli(stack, "submit", "--file", str(path))
    # Then each bad line has its own error line, with its own number, and nothing went out
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("idvcancel: error:")]
    assert len(errors) == 2
    assert "line 2: not valid JSON" in errors[0] and "(column 2)" in errors[0]
    assert "line 3: provider" in errors[1] and "nothing was sent (2 bad lines)" in errors[1]
    time.sleep(0.5)
    assert stack.events() == [] and stack.redis.llen("idvcancel") == 0


def test_submit_file_from_stdin_reports_invalid_json(stack: Stack) -> None:
    proc = run_cli(stack, "submit", "--file", "-", input_text="{not json\n")
    assert proc.returncode == 2
    assert "line 1: not valid JSON" in one_line_error(proc)


def test_results_prints_matching_events_one_json_per_line(stack: Stack) -> None:
    # Given one cancelled and one not-found request
    cancelled, missing = stack.request(), stack.request()
    seed(stack, "idpass", cancelled["reference"], "new")
    stack.producer.submit_many([cancelled, missing])
    stack.results([cancelled["request_id"], missing["request_id"]])
    # When results are listed, all of them and then by outcome and by request id
    every = run_cli(stack, "results")
    by_outcome = run_cli(stack, "results", "--outcome", "not_found")
    by_id = run_cli(stack, "results", "--request-id", cancelled["request_id"],
                    "--provider", "idpass")
    # Then each filter finds exactly its events
    assert every.returncode == by_outcome.returncode == by_id.returncode == 0
    assert {e["request_id"] for e in json_lines(every.stdout)} == {
        cancelled["request_id"], missing["request_id"]}
    assert [e["request_id"] for e in json_lines(by_outcome.stdout)] == [missing["request_id"]]
    assert [e["outcome"] for e in json_lines(by_id.stdout)] == ["cancelled"]


def test_results_follow_streams_new_events(stack: Stack) -> None:
    # Given an earlier not-found result, and an operator following not-found results
    # from now on
    old = stack.request()
    stack.producer.submit(old)
    stack.result(old["request_id"], settle=0)
    follower = start_cli(stack, "results", "--follow", "--new-only", "--outcome", "not_found")
    lines = lines_of(follower)
    try:
        time.sleep(2)  # let it start and take its position at the end of the stream
        # When a cancelled and then a not-found request complete
        cancelled, missing = stack.request(), stack.request()
        seed(stack, "idpass", cancelled["reference"], "new")
        stack.producer.submit(cancelled)
        stack.result(cancelled["request_id"], settle=0)
        stack.producer.submit(missing)
        # Then the follower prints the new not-found one only, as it arrives
        line = wait_line(lines, "request_id")
        assert json.loads(line)["request_id"] == missing["request_id"]
        assert follower.poll() is None  # and goes on following
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_results_new_only_needs_follow(stack: Stack) -> None:
    proc = run_cli(stack, "results", "--new-only")
    assert proc.returncode == 2
    assert "--follow" in one_line_error(proc)


def test_status_shows_ledger_results_and_audit(stack: Stack) -> None:
    # Given a request that was cancelled
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.producer.submit(request)
    stack.result(request["request_id"])
    # When its status is asked
    proc = run_cli(stack, "status", request["request_id"])
    # Then the ledger, the one result and the audit steps are shown
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["ledger"]["phase"] == "done" and shown["ledger"]["outcome"] == "cancelled"
    assert shown["ledger"]["attempts"] == 1 and shown["ledger"]["replays"] == 0
    assert [e["outcome"] for e in shown["results"]] == ["cancelled"]
    assert [r["step"] for r in shown["audit"]] == ["received", "attempt", "completed"]
    assert shown["dead_letter"] is None
    assert shown["intake"] is None  # done: no longer in the intake index


def test_status_knows_a_request_that_is_queued_but_not_yet_delivered(stack: Stack) -> None:
    # Given a request in the intake index whose message no worker has taken yet
    stack.redis.zadd("idvcancel:intake", {"queued-1": 1_700_000_000.5})
    # When its status is asked
    proc = run_cli(stack, "status", "queued-1")
    # Then it is known: pushed, no ledger yet
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["intake"] == {"pushed_at": 1_700_000_000.5} and shown["ledger"] is None


def test_status_of_an_unknown_request_exits_1(stack: Stack) -> None:
    proc = run_cli(stack, "status", "never-seen")
    assert proc.returncode == 1
    assert "never-seen" in one_line_error(proc)
    assert proc.stdout == ""


def test_dlq_list_shows_dead_letters_oldest_first(stack: Stack) -> None:
    # Given two requests refused with 401 (dead-lettered as unauthorized)
    first, second = stack.request(), stack.request()
    stack.sim_client.set_faults("idpass", fail_next=[401, 401])
    stack.producer.submit(first)
    stack.result(first["request_id"], settle=0)
    stack.producer.submit(second)
    stack.result(second["request_id"], settle=0)
    # When the dead letters are listed
    proc = run_cli(stack, "dlq", "list")
    # Then both are there, in order, with their request and outcome
    assert proc.returncode == 0, proc.stderr
    entries = json_lines(proc.stdout)
    assert [e["id"] for e in entries] == [first["request_id"], second["request_id"]]
    assert all(e["outcome"] == "unauthorized" for e in entries)
    assert entries[0]["request"]["reference"] == first["reference"]
    assert json_lines(run_cli(stack, "dlq", "list", "--limit", "1").stdout) == entries[:1]


def test_dlq_replay_needs_an_id_or_all(stack: Stack) -> None:
    assert run_cli(stack, "dlq", "replay").returncode == 2
    both = run_cli(stack, "dlq", "replay", "x", "--all")
    assert both.returncode == 2 and "REQUEST_ID or --all" in one_line_error(both)


def test_audit_verify_passes_then_names_a_forged_record(stack: Stack) -> None:
    # Given a completed request
    request = stack.request()
    stack.producer.submit(request)
    stack.result(request["request_id"])
    ok = run_cli(stack, "audit", "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("audit chain OK")
    # When a record is appended behind the journal's back
    forged = {**stack.audit(request["request_id"])[-1], "step": "completed", "seq": 99}
    entry_id = stack.redis.xadd("idvcancel:audit", {"record": json.dumps(forged)})
    # Then verify exits 1 naming that record
    broken = run_cli(stack, "audit", "verify")
    assert broken.returncode == 1
    assert str(entry_id) in one_line_error(broken)


def test_sweep_dry_run_lists_what_it_would_cancel(stack: Stack) -> None:
    tracking = pytest.importorskip("worker.triggers.tracking", reason="sweep module pending")
    pytest.importorskip("worker.triggers.sweep", reason="sweep module pending")
    # Given an ID Pass session idle for thirty days
    reference = new_reference("idpass")
    session = tracking.TrackedSession(provider="idpass", application_id="app-1",
                                      status="opened", reference=reference,
                                      last_activity=time.time() - 30 * 86400)
    tracking.record(stack.redis, session, retention_seconds=60)
    # When the sweep is dry-run
    proc = run_cli(stack, "sweep", "--dry-run")
    # Then it lists that session's cancel and sends nothing
    assert proc.returncode == 0, proc.stderr
    (item,) = json_lines(proc.stdout)
    assert item["provider"] == "idpass" and item["reference"] == reference
    assert item["action"] == "cancel" and item["source"] == "sweep"
    time.sleep(0.5)
    assert stack.events() == []


def test_sweep_without_dry_run_is_a_usage_error(stack: Stack) -> None:
    proc = run_cli(stack, "sweep")
    assert proc.returncode == 2
    assert "--dry-run" in one_line_error(proc)


def test_beat_starts_celery_beat(stack: Stack, tmp_path: Path) -> None:
    # When beat is started (its schedule file in a temporary directory)
    beat = start_cli(stack, "beat", "-s", str(tmp_path / "schedule"))
    try:
        # Then Celery beat itself comes up on our app
        wait_line(lines_of(beat), "beat: Starting")
    finally:
        beat.terminate()
        try:
            beat.wait(timeout=15)
        except subprocess.TimeoutExpired:  # beat mid-send can ignore SIGTERM a while
            beat.kill()
            beat.wait(timeout=5)


def test_unreachable_redis_is_one_line_and_exit_1(stack: Stack) -> None:
    env = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run([IDVCANCEL, "dlq", "list"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in proc.stderr
