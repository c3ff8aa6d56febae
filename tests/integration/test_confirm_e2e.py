"""Confirmation end to end, for every provider: a real worker carries each request out at
the simulator, a real ``celery beat`` drains the confirmations as they fall due, and each
read-back lands on the record — ``confirmed`` where the action took hold,
``confirmation_failed`` where the simulator was told to keep showing the session as it
was (the provider said 200 and did nothing). Failed ones are listed by ``idvcancel
attention list``; result events stay as they were; a receipt carries the confirmation.

The stack's worker runs with ``IDVCANCEL_CONFIRM_AFTER_SECONDS=1`` (tests/integration/
conftest.py); beat here enqueues ``idvcancel.confirm`` twice a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import Stack, seed
from tests.reliability.conftest import BeatProcess

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))
CONFIRMATION_STEPS = ("confirmed", "confirmation_failed")

#: provider, action, the session's status before, request fields, seed fields
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("idpass", "cancel", "opened", {}, {}),
    ("txcloud", "cancel", "pending", {}, {}),
    ("gu1", "cancel", "in_progress", {"reason": "customer withdrew"}, {}),
    ("jumio", "delete", "PENDING", {"options": {"product": "document", "region": "eu"}},
     {"product": "document", "region": "eu"}),
    ("onespan", "cancel", "new", {}, {}),
    ("onespan", "delete", "completed", {"options": {"grace_period": 0}}, {}),
]


@pytest.fixture
def beat(stack: Stack, tmp_path: Path) -> Iterator[BeatProcess]:
    process = BeatProcess({**stack.env, "IDVCANCEL_CONFIRM_INTERVAL_SECONDS": "0.5"}, tmp_path)
    process.start().wait_ready()
    try:
        yield process
    finally:
        process.stop()


def submit(stack: Stack, provider: str, action: str, status: str, fields: dict[str, Any],
           seed_fields: dict[str, Any], *, keep_active: bool = False) -> dict[str, Any]:
    request = stack.request(provider, action, **fields)
    seed(stack, provider, request["reference"], status, **seed_fields)
    if keep_active:
        stack.sim_client.keep_active(provider, request["reference"])
    stack.producer.submit(request)
    return request


def confirmation(stack: Stack, request_id: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in stack.audit(request_id) if r["step"] in CONFIRMATION_STEPS]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, f"no confirmation of {request_id} in {timeout} s"
        time.sleep(0.2)


def run_cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url, **env}
    return subprocess.run([IDVCANCEL, *args], env=full, capture_output=True, text=True,
                          timeout=60, check=False)


def test_every_provider_is_confirmed_and_a_session_left_active_is_caught(
        stack: Stack, beat: BeatProcess) -> None:
    # Given a cancel or deletion at every provider, and at ID Pass and Jumio one whose
    # provider answers 200 but keeps showing the session as it was
    done = [submit(stack, *case) for case in CASES]
    ignored = [submit(stack, *CASES[0], keep_active=True),
               submit(stack, *CASES[3], keep_active=True)]
    # When they end and their confirmations fall due
    events = stack.results([r["request_id"] for r in [*done, *ignored]])
    assert {e["outcome"] for e in events.values()} == {"cancelled", "deleted"}
    # Then each that took hold is confirmed by its provider's status read
    seen = {}
    for request in done:
        record = confirmation(stack, request["request_id"])
        assert record["step"] == "confirmed", record
        assert record["outcome"] == events[request["request_id"]]["outcome"]
        seen[(request["provider"], request["action"])] = (record["provider_status"],
                                                          record["http_status"])
    assert seen == {("idpass", "cancel"): ("cancelled", 200),
                    ("txcloud", "cancel"): ("cancelled", 200),
                    ("gu1", "cancel"): ("cancelled", 200),
                    ("jumio", "delete"): (None, 404),
                    ("onespan", "cancel"): ("cancelled", 200),
                    ("onespan", "delete"): ("marked_for_erasure", 200)}
    # And the two left active fail their confirmation, saying what was read
    failed = [confirmation(stack, r["request_id"]) for r in ignored]
    assert [(f["step"], f["provider_status"], f["error"]) for f in failed] == [
        ("confirmation_failed", "opened", "still_active"),
        ("confirmation_failed", "PENDING", "still_present")]
    # and they, only they, need attention
    listed = run_cli(stack, "attention", "list")
    assert listed.returncode == 0, listed.stderr
    entries = {e["request_id"]: e for e in map(json.loads, listed.stdout.splitlines())}
    assert set(entries) == {r["request_id"] for r in ignored}
    assert entries[ignored[0]["request_id"]]["provider_status"] == "opened"
    # And no result event was rewritten or added
    again = stack.results([r["request_id"] for r in [*done, *ignored]], settle=0)
    assert again == events
    stack.assert_chain_intact()


def test_a_receipt_carries_the_confirmation_and_attention_can_be_cleared(
        stack: Stack, beat: BeatProcess, tmp_path: Path) -> None:
    # Given a cancel that was confirmed and one that was not
    good = submit(stack, *CASES[1])
    bad = submit(stack, *CASES[2], keep_active=True)
    assert confirmation(stack, good["request_id"])["step"] == "confirmed"
    assert confirmation(stack, bad["request_id"])["step"] == "confirmation_failed"
    # When a checkpoint is signed and their receipts are made
    key = tmp_path / "audit-signing.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    signer = {"IDVCANCEL_AUDIT_SIGNING_KEY": str(key),
              "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert run_cli(stack, "audit", "checkpoint", **signer).returncode == 0
    public = tmp_path / "public.pem"
    public.write_text(run_cli(stack, "audit", "public-key", **signer).stdout)
    for request, expected in ((good, "confirmed"), (bad, "confirmation_failed")):
        made = run_cli(stack, "receipt", request["request_id"], **signer)
        assert made.returncode == 0, made.stderr
        receipt = json.loads(made.stdout)
        # Then each carries its confirmation, and verifies
        assert (receipt["outcome"], receipt["confirmation"]) == ("cancelled", expected)
        assert receipt["records"][-1]["record"]["step"] == expected
        path = tmp_path / f"{request['request_id']}.json"
        path.write_text(made.stdout)
        checked = run_cli(stack, "receipt", "verify", str(path), "--public-key", str(public))
        assert checked.returncode == 0 and f"confirmation {expected}" in checked.stdout
    # And once a person dealt with the failed one, it leaves the list
    forgot = run_cli(stack, "attention", "forget", bad["request_id"])
    assert forgot.returncode == 0, forgot.stderr
    assert run_cli(stack, "attention", "list").stdout == ""
    again = run_cli(stack, "attention", "forget", bad["request_id"])
    assert again.returncode == 1 and "not on the needs-attention list" in again.stderr
