"""The audit algorithm is language-neutral: a Node.js verifier that shares no code with
us (``node_verify/verify.js``: Node's own crypto and the npm package ``canonicalize``)
recomputes every record hash of a real chain, the Merkle root of each checkpoint and each
checkpoint's Ed25519 signature, from the archive files and ``checkpoints.jsonl`` an
operator would hand a regulator, and finds an edit we make to them.

``node_modules`` is installed beside the script on first use (``npm install``); the test
is skipped only on a machine without ``node``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import Stack, seed

NODE_DIR = Path(__file__).resolve().parent / "node_verify"
NODE = shutil.which("node")
IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture(scope="module")
def verifier() -> Path:
    """The verifier script, with ``canonicalize`` installed beside it."""
    if not (NODE_DIR / "node_modules" / "canonicalize").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: cannot install canonicalize"
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=300)
    return NODE_DIR / "verify.js"


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **stack.env, "IDVCANCEL_REDIS_URL": stack.redis_url, **env}
    run = subprocess.run([IDVCANCEL, *args], env=full, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return run


def node(script: Path, public: Path, directory: Path) -> tuple[int, dict[str, Any]]:
    assert NODE is not None
    files = sorted(str(p) for p in directory.glob("audit-*.jsonl"))
    run = subprocess.run([NODE, str(script), "--public-key", str(public), "--checkpoints",
                          str(directory / "checkpoints.jsonl"), *files],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout)


def test_node_recomputes_the_chain_the_roots_and_the_signatures(
        verifier: Path, stack: Stack, tmp_path: Path) -> None:
    # Given a real chain with two signed checkpoints (every kind of step: a retry, a
    # not_found, a gu1 cancel with its reason) moved to the archive files
    key = tmp_path / "audit-signing.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    archive = tmp_path / "archive"
    signer = {"IDVCANCEL_AUDIT_SIGNING_KEY": str(key), "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(archive)}
    stack.sim_client.set_faults("idpass", fail_next=[503])
    unknown = "0f0f0f0f-0000-4000-8000-0000000000ff"
    for request in (stack.request(), stack.request(reference=unknown),
                    stack.request("gu1", reason="customer asked to stop, twice")):
        if request["reference"] != unknown:
            seed(stack, request["provider"], request["reference"], "pending"
                 if request["provider"] == "gu1" else "opened")
        stack.producer.submit(request)
        stack.result(request["request_id"], settle=0)
        cli(stack, "audit", "checkpoint", **signer)
    cli(stack, "audit", "archive", "--older-than", "0", "--dir", str(archive))
    public = tmp_path / "audit-public.pem"
    public.write_text(cli(stack, "audit", "public-key", **signer).stdout)
    checkpoints = [json.loads(line) for line in
                   (archive / "checkpoints.jsonl").read_text().splitlines()]
    # When the Node.js verifier reads the archive, the checkpoints and the public key
    code, report = node(verifier, public, archive)
    # Then every record, root and signature verifies there too: the same algorithm
    assert code == 0, report
    head = int(str(stack.redis.get("idvcancel:audit:head")).split(":")[0])
    assert report["records"] == checkpoints[-1]["seq"] == head
    assert report["roots"] == [c["merkle_root"] for c in checkpoints]
    assert report["checkpoints"] == 3
    # And an edit to an archived record is found by it
    day = sorted(archive.glob("audit-*.jsonl"))[0]
    original = day.read_text()
    day.write_text(original.replace('"outcome":"cancelled"', '"outcome":"not_found"', 1))
    code, report = node(verifier, public, archive)
    assert code == 1 and "its hash does not match its content" in report["failure"]
    # And so is a checkpoint whose root was changed (its signature no longer verifies)
    day.write_text(original)
    path = archive / "checkpoints.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(checkpoints[1]["merkle_root"], "0" * 64)
    path.write_text("\n".join(lines) + "\n")
    code, report = node(verifier, public, archive)
    assert code == 1 and report["failure"].startswith("checkpoint #2 ")
    assert "signature does not verify" in report["failure"]
