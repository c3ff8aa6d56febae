"""``idvcancel receipt`` end to end: the receipt of a request carried out by a real worker,
checked offline with ``idvcancel receipt verify`` and the public key only (no Redis: the
verifying process is pointed at a Redis that does not exist), a byte changed in it
caught and named, and the one-line errors and exit codes a script relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import Stack, seed

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))
#: Where the offline verifier "is": no Redis answers there.
NO_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
def signer_env(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "audit-signing.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"IDVCANCEL_AUDIT_SIGNING_KEY": str(key),
            "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(tmp_path / "archive")}


def run_cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url, **env}
    return subprocess.run([IDVCANCEL, *args], env=full, capture_output=True, text=True,
                          timeout=60, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idvcancel: error: "), proc.stderr
    return lines[0]


def test_a_receipt_is_checked_offline_and_a_changed_byte_is_named(
        stack: Stack, signer_env: dict[str, str], tmp_path: Path) -> None:
    # Given a cancel carried out (after one retry) and a signed checkpoint over it
    request = stack.request(reason="customer asked")
    seed(stack, "idpass", request["reference"], "opened")
    stack.sim_client.set_faults("idpass", fail_next=[503])
    stack.producer.submit(request)
    assert stack.result(request["request_id"])["outcome"] == "cancelled"
    assert run_cli(stack, "audit", "checkpoint", **signer_env).returncode == 0
    public = tmp_path / "audit-public.pem"
    public.write_text(run_cli(stack, "audit", "public-key", **signer_env).stdout)
    # When the compliance officer asks for its receipt
    made = run_cli(stack, "receipt", request["request_id"], **signer_env)
    # Then it is one JSON document with every record of the request and their proofs
    assert made.returncode == 0, made.stderr
    receipt = json.loads(made.stdout)
    assert receipt["outcome"] == "cancelled" and receipt["request"]["reason"] == "customer asked"
    assert [i["record"]["step"] for i in receipt["records"]] == [
        "received", "attempt", "retry_scheduled", "attempt", "completed"]
    assert all(i["proof"] is not None for i in receipt["records"])
    path = tmp_path / "receipt.json"
    path.write_text(made.stdout)
    # And it verifies offline, with the public key and without our Redis
    checked = run_cli(stack, "receipt", "verify", str(path), "--public-key", str(public),
                      IDVCANCEL_REDIS_URL=NO_REDIS)
    assert checked.returncode == 0, checked.stderr
    assert (f"receipt OK: request {request['request_id']}, outcome cancelled, confirmation"
            " none; 5 records proven by 1 signed checkpoints") in checked.stdout
    # And one byte changed (the provider's answer in the first attempt) is named
    path.write_text(made.stdout.replace('"http_status":503', '"http_status":502', 1))
    changed = run_cli(stack, "receipt", "verify", str(path), "--public-key", str(public),
                      IDVCANCEL_REDIS_URL=NO_REDIS)
    assert changed.returncode == 1
    assert "(seq 2, step attempt): its hash does not match its content" in one_line_error(
        changed)


def test_receipt_errors_are_one_line_with_their_exit_codes(
        stack: Stack, signer_env: dict[str, str], tmp_path: Path) -> None:
    # Given a request carried out after the last checkpoint
    request = stack.request()
    seed(stack, "idpass", request["reference"], "new")
    stack.producer.submit(request)
    stack.result(request["request_id"])
    public = tmp_path / "audit-public.pem"
    public.write_text(run_cli(stack, "audit", "public-key", **signer_env).stdout)
    # When its receipt is made before any checkpoint covers it
    made = run_cli(stack, "receipt", request["request_id"], **signer_env)
    assert made.returncode == 0 and "pending until the next checkpoint" in made.stderr
    path = tmp_path / "receipt.json"
    path.write_text(made.stdout)
    # Then verifying it says the records are not proven yet (exit 1)
    pending = run_cli(stack, "receipt", "verify", str(path), "--public-key", str(public))
    assert pending.returncode == 1 and "not proven yet" in one_line_error(pending)
    # And an unknown request is exit 1, a missing file or key exit 2, all one line
    unknown = run_cli(stack, "receipt", "no-such-request", **signer_env)
    assert unknown.returncode == 1 and "no audit record" in one_line_error(unknown)
    missing = run_cli(stack, "receipt", "verify", str(tmp_path / "nope.json"),
                      "--public-key", str(public))
    assert missing.returncode == 2 and "nope.json" in one_line_error(missing)
    no_key = run_cli(stack, "receipt", "verify", str(path))
    assert no_key.returncode == 2 and "--public-key" in one_line_error(no_key)
