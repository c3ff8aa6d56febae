"""Signed checkpoints end to end: ``idvcancel audit checkpoint``, ``audit public-key`` and
``audit verify --public-key`` as subprocesses against the stack (real Redis, a real
worker, the simulator), and the periodic path with the key held by one signer process
only: a real ``celery beat`` sends ``idvcancel.checkpoint`` to the signer's queue, the
worker that writes the chain has no key and never sees the task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import Stack, seed
from tests.integration.harness import wait_for
from tests.reliability.conftest import BeatProcess
from worker import keys
from worker.journal import checkpoints, verdicts
from worker.local.procs import WorkerProcess

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit-signing.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def run_cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url, **env}
    return subprocess.run([IDVCANCEL, *args], env=full, capture_output=True, text=True,
                          timeout=60, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idvcancel: error: "), proc.stderr
    return lines[0]


def cancel_some(stack: Stack, n: int) -> list[str]:
    requests = [stack.request() for _ in range(n)]
    for request in requests:
        seed(stack, "idpass", request["reference"], "opened")
        stack.producer.submit(request)
    stack.results([r["request_id"] for r in requests])
    return [r["request_id"] for r in requests]


def test_an_operator_signs_prints_the_key_and_verifies(stack: Stack, key_file: Path,
                                                       archive: Path, tmp_path: Path) -> None:
    # Given three requests carried out
    cancel_some(stack, 3)
    records = stack.assert_chain_intact()
    signer = {"IDVCANCEL_AUDIT_SIGNING_KEY": str(key_file),
              "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(archive)}
    # When the operator signs a checkpoint now
    run = run_cli(stack, "audit", "checkpoint", **signer)
    # Then one JSON object says it covers every record
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["written"] == 1 and summary["checkpoints"][0]["seq"] == records
    assert (archive / "checkpoints.jsonl").exists()
    # And the public key is printed as PEM, which verifies the chain (no private key)
    pem = run_cli(stack, "audit", "public-key", **signer)
    assert pem.returncode == 0 and pem.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    public = tmp_path / "public.pem"
    public.write_text(pem.stdout)
    verified = run_cli(stack, "audit", "verify", "--public-key", str(public),
                       IDVCANCEL_AUDIT_ARCHIVE_DIR=str(archive))
    assert verified.returncode == 0, verified.stderr
    key = checkpoints.key_id(checkpoints.load_public_key(str(public)))
    assert (f"audit chain OK: {records} records; 1 signed checkpoints verified with key {key},"
            f" covering {records} records") in verified.stdout
    # And records written after it are reported as pending until the next one
    cancel_some(stack, 1)
    later = run_cli(stack, "audit", "verify", "--public-key", str(public),
                    IDVCANCEL_AUDIT_ARCHIVE_DIR=str(archive))
    assert later.returncode == 0 and "pending until the next checkpoint" in later.stdout


def test_checkpoint_commands_need_a_key_and_say_so_in_one_line(
        stack: Stack, key_file: Path, tmp_path: Path) -> None:
    # Given no IDVCANCEL_AUDIT_SIGNING_KEY
    # When an operator asks for a checkpoint or the public key
    for args in (["audit", "checkpoint"], ["audit", "public-key"]):
        run = run_cli(stack, *args, IDVCANCEL_AUDIT_ARCHIVE_DIR=str(tmp_path / "a"))
        # Then it is a usage error naming the setting
        assert run.returncode == 2
        assert "IDVCANCEL_AUDIT_SIGNING_KEY is not set" in one_line_error(run)
    # And a public key that is missing, or a private key given as one, is refused
    missing = run_cli(stack, "audit", "verify", "--public-key", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "cannot read the public key" in one_line_error(missing)
    private = run_cli(stack, "audit", "verify", "--public-key", str(key_file))
    assert private.returncode == 2 and "not a PEM public key" in one_line_error(private)
    # And verifying against a key while nothing was ever signed fails, saying why
    cancel_some(stack, 1)
    public = tmp_path / "public.pem"
    public.write_text(run_cli(stack, "audit", "public-key",
                              IDVCANCEL_AUDIT_SIGNING_KEY=str(key_file)).stdout)
    unsigned = run_cli(stack, "audit", "verify", "--public-key", str(public),
                       IDVCANCEL_AUDIT_ARCHIVE_DIR=str(tmp_path / "a"))
    assert unsigned.returncode == 1 and "no checkpoint" in one_line_error(unsigned)


def test_beat_has_only_the_signer_sign_checkpoints(stack: Stack, key_file: Path,
                                                   archive: Path, tmp_path: Path) -> None:
    # Given the stack's worker (no key) and a signer process that alone holds the key,
    # consuming its own queue, and beat sending checkpoints there every second
    periodic = {"IDVCANCEL_AUDIT_CHECKPOINT_QUEUE": "idvcancel.signer",
                "IDVCANCEL_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
                "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(archive)}
    signer = WorkerProcess({**stack.env, **periodic,
                            "IDVCANCEL_AUDIT_SIGNING_KEY": str(key_file)},
                           concurrency=1, queue="idvcancel.signer",
                           log_path=tmp_path / "signer.log")
    signer.start()
    beat = BeatProcess({**stack.env, **periodic}, tmp_path)
    try:
        signer.wait_ready(timeout=60)
        beat.start().wait_ready()
        # When requests are carried out
        cancel_some(stack, 4)
        head = stack.assert_chain_intact()
        # Then within a few ticks a checkpoint covers every record
        deadline = time.monotonic() + 30
        while (state := checkpoints.read_head(stack.redis)) is None or state.seq < head:
            assert time.monotonic() < deadline, f"no checkpoint up to {head}: {state}"
            time.sleep(0.2)
        # and the signer left a good verdict for the metrics (idvcancel_audit_verify_ok)
        verdict = wait_for(lambda: verdicts.parse(cast("dict[str, str]", stack.redis.hgetall(
            keys.AUDIT_VERIFIED))).get("checkpoint"), 10, message="no checkpoint verdict")
        assert verdict.ok
    finally:
        beat.stop()
        signer.stop()
    # And it verifies with the public key, and the signer wrote it
    public = tmp_path / "public.pem"
    public.write_text(checkpoints.public_pem(
        checkpoints.load_signer(str(key_file)).public_key))
    run = run_cli(stack, "audit", "verify", "--public-key", str(public),
                  IDVCANCEL_AUDIT_ARCHIVE_DIR=str(archive))
    assert run.returncode == 0, run.stderr
    assert "checkpoint_written" in (tmp_path / "signer.log").read_text()
    # and the worker without the key was never handed the task
    # (a key-less process handed the task would have said checkpoint_no_signing_key)
    assert all("checkpoint_no_signing_key" not in w.log_path.read_text()
               and "checkpoint_written" not in w.log_path.read_text() for w in stack.workers)
