"""Retention end to end on the stack (real Redis, real workers, the simulator): the audit
archive and ``idvcancel audit archive`` / ``audit verify [--archive]`` as an operator
runs them, the ledger TTL of each phase, the capped results stream and the
``idvcancel.retention`` task run by a worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from tests.integration.conftest import Stack, seed
from tests.integration.harness import send_process, wait_for
from worker import keys
from worker.journal import verdicts

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))
WEEK = 7 * 86400


def run_cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDVCANCEL, *args], env={**os.environ, **stack.env, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def run_requests(stack: Stack, n: int) -> list[str]:
    """``n`` ID Pass cancels, carried out to the end by the stack's worker."""
    requests = [stack.request() for _ in range(n)]
    for request in requests:
        seed(stack, "idpass", request["reference"], "new")
    stack.producer.submit_many(requests)
    ids = [r["request_id"] for r in requests]
    stack.results(ids, settle=0.2)
    return ids


def phases(stack: Stack, request_ids: list[str]) -> list[str | None]:
    pipe = stack.redis.pipeline(transaction=False)
    for request_id in request_ids:
        pipe.hget(keys.request_ledger(request_id), "phase")
    return list(pipe.execute())


def phase_and_ttl(stack: Stack, request_id: str) -> tuple[str | None, int]:
    """The ledger's phase and TTL, read together (MULTI)."""
    pipe = stack.redis.pipeline(transaction=True)
    pipe.hget(keys.request_ledger(request_id), "phase")
    pipe.ttl(keys.request_ledger(request_id))
    phase, ttl = pipe.execute()
    return phase, int(ttl)


def own_worker(stack: Stack, **env: str) -> None:
    """Replace the shared worker by one with ``env`` (the fixture brings it back)."""
    stack.workers[0].stop()
    stack.start_worker(16, **env)


# -- the audit archive -------------------------------------------------------------------


def test_archive_then_verify_both_ways_and_name_a_tampered_line(
        stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "audit-archive"
    # Given 12 requests carried out
    run_requests(stack, 12)
    records = len(stack.audit())
    assert records >= 12 * 3
    # When every record so far is archived by hand
    moved = run_cli(stack, "audit", "archive", "--older-than", "0", "--dir", str(archive))
    # Then all of them left Redis for one day file, and the archived head is the last one
    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout)
    assert summary["archived"] == records and summary["ok"] is True
    assert stack.redis.xlen(keys.AUDIT) == 0
    (day_file,) = archive.glob("audit-*.jsonl")
    assert summary["files"] == [day_file.name]
    assert summary["head"]["seq"] == records
    # And Redis alone verifies from the archived head, and the archive plus Redis too
    alone = run_cli(stack, "audit", "verify")
    assert alone.returncode == 0, alone.stderr
    assert f"continuing from the archived seq {records}" in alone.stdout
    whole = run_cli(stack, "audit", "verify", "--archive", str(archive))
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.startswith(f"audit chain OK: {records} records")
    # When more requests run, the chain goes on across the cut
    run_requests(stack, 5)
    after = records + len(stack.audit())
    assert run_cli(stack, "audit", "verify").returncode == 0
    whole = run_cli(stack, "audit", "verify", "--archive",
                    IDVCANCEL_AUDIT_ARCHIVE_DIR=str(archive))  # --archive alone: the setting
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.startswith(f"audit chain OK: {after} records ({records} in ")
    # When one field of one archived line is edited
    lines = day_file.read_text().splitlines(keepends=True)
    entry = json.loads(lines[6])
    entry["record"]["requested_by"] = "someone-else"
    lines[6] = json.dumps(entry) + "\n"
    day_file.write_text("".join(lines))
    # Then verifying the archive exits 1 naming that file and line
    broken = run_cli(stack, "audit", "verify", "--archive", str(archive))
    assert broken.returncode == 1, broken.stdout
    assert f"record {day_file}:7 (seq 7," in broken.stderr, broken.stderr
    assert "edited" in broken.stderr and "after 6 good records" in broken.stderr
    # while Redis alone, which no longer holds that record, still verifies
    assert run_cli(stack, "audit", "verify").returncode == 0


def test_a_second_archive_run_into_another_directory_is_refused(
        stack: Stack, tmp_path: Path) -> None:
    run_requests(stack, 3)
    assert run_cli(stack, "audit", "archive", "--older-than", "0",
                   "--dir", str(tmp_path / "a")).returncode == 0
    run_requests(stack, 2)
    left = stack.redis.xlen(keys.AUDIT)
    # When another host (another directory) archives
    refused = run_cli(stack, "audit", "archive", "--older-than", "0",
                      "--dir", str(tmp_path / "b"))
    # Then it refuses, and nothing left Redis
    assert refused.returncode == 1
    assert "does not hold the archived head" in refused.stderr
    assert stack.redis.xlen(keys.AUDIT) == left


# -- ledger TTL --------------------------------------------------------------------------


def test_a_done_ledger_expires_and_one_in_a_call_does_not(stack: Stack) -> None:
    # Given finished requests (the stack's worker has the default TTL, 7 days)
    done = run_requests(stack, 3)
    # Then each finished ledger expires within the TTL
    for request_id in done:
        phase, ttl = phase_and_ttl(stack, request_id)
        assert phase == "done" and 0 < ttl <= WEEK
    # When a request is in the middle of a slow provider call
    stack.sim_client.set_faults("idpass", latency_ms=1200)
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.producer.submit(request)
    wait_for(lambda: phase_and_ttl(stack, request["request_id"])[0] == "calling", 15,
             message="the request never reached the calling phase")
    # Then its ledger has no TTL, and gets one once the call is done
    assert phase_and_ttl(stack, request["request_id"]) == ("calling", -1)
    assert stack.result(request["request_id"])["outcome"] == "cancelled"
    assert 0 < phase_and_ttl(stack, request["request_id"])[1] <= WEEK


def test_a_waiting_ledger_does_not_expire(stack: Stack) -> None:
    # Given a worker with an hour's ledger TTL and retries long enough to watch
    own_worker(stack, IDVCANCEL_LEDGER_TTL_SECONDS="3600", IDVCANCEL_RETRY_BASE_SECONDS="1",
               IDVCANCEL_RETRY_CAP_SECONDS="2")
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.sim_client.script_reference("idpass", request["reference"], [503, 503, 503])
    # When the request fails three times before it is cancelled
    stack.producer.submit(request)
    samples: list[tuple[str | None, int]] = []
    deadline = time.monotonic() + 30
    while (sample := phase_and_ttl(stack, request["request_id"]))[0] != "done":
        samples.append(sample)
        assert time.monotonic() < deadline, f"not done after 30 s: {samples[-5:]}"
        time.sleep(0.005)
    # Then while it waited for its retries, and while it called, it had no TTL
    in_flight = {ttl for phase, ttl in samples if phase in ("waiting", "calling")}
    assert "waiting" in {phase for phase, _ in samples}
    assert in_flight == {-1}, samples
    # and once done, the configured one
    assert 3500 < phase_and_ttl(stack, request["request_id"])[1] <= 3600


# -- results cap and the periodic task ---------------------------------------------------


def test_results_stay_capped_and_the_retention_task_archives(
        stack: Stack, tmp_path: Path) -> None:
    archive = tmp_path / "task-archive"
    # Given a worker with a results cap of 20 that archives every audit record when asked
    own_worker(stack, IDVCANCEL_RESULTS_MAXLEN="20", IDVCANCEL_AUDIT_RETENTION_SECONDS="0",
               IDVCANCEL_AUDIT_ARCHIVE_DIR=str(archive))
    # When 300 requests run (unknown references: not_found, fast)
    requests = [stack.request() for _ in range(300)]
    ids = stack.producer.submit_many(requests)
    wait_for(lambda: all(p == "done" for p in phases(stack, ids)), 90,
             message="not every request finished")
    # Then the results stream holds about the cap, not one event per request
    assert stack.redis.xlen(keys.RESULTS) <= 20 + 100  # MAXLEN ~ trims whole nodes
    audit_records = stack.redis.xlen(keys.AUDIT)
    # When the periodic task runs on the worker
    send_process(stack.broker_url, None, task_name="idvcancel.retention", args=[])

    def archived() -> Any:
        raw = stack.redis.hgetall(keys.AUDIT_ARCHIVED)
        return raw if raw and int(raw["records"]) >= audit_records else None

    head = wait_for(archived, 30, message="the retention task archived nothing")
    # Then the records are in the worker's archive directory and both walks verify
    assert len(list(archive.glob("audit-*.jsonl"))) >= 1
    assert int(head["seq"]) >= audit_records
    assert run_cli(stack, "audit", "verify").returncode == 0
    whole = run_cli(stack, "audit", "verify", "--archive", str(archive))
    assert whole.returncode == 0, whole.stderr
    # and the task and the CLI each left a good verdict for the metrics
    found = verdicts.parse(cast("dict[str, str]", stack.redis.hgetall(keys.AUDIT_VERIFIED)))
    assert found["retention"].ok and found["cli"].ok
