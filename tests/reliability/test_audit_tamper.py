"""Audit tamper: edit, insert and delete records of ``idvcancel:audit`` and check that
``idvcancel audit verify`` (the operator's command, as a subprocess) exits 1 naming the
record at which the chain breaks, and exits 0 on the untouched chain.

Redis streams cannot be edited in place, so a tamperer copies the entries to a new
stream (one changed, added or left out) and RENAMEs it over ``idvcancel:audit``; each
case starts again from the pristine copy taken after the run.

The chain alone cannot catch a forger who re-seals every record after an edit and the
head; a checkpoint signed with a key outside Redis (``idvcancel audit checkpoint``) can:
``audit verify --public-key`` names it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.reliability.conftest import RelStack
from worker.journal.chain import record_hash

IDVCANCEL = Path(sys.executable).parent / "idvcancel"
AUDIT = "idvcancel:audit"
Record = dict[str, Any]


def verify(rel: RelStack) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IDVCANCEL), "audit", "verify"],
                          env={**os.environ, "IDVCANCEL_REDIS_URL": rel.redis_url},
                          capture_output=True, text=True, timeout=60, check=False)


def reseal(record: Record) -> Record:
    """What a careful forger does: recompute the record's own hash."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return {**body, "hash": record_hash(body)}


def rewrite(rel: RelStack, records: list[Record]) -> list[str]:
    """Replace the audit stream by ``records`` (copy to a new stream, RENAME over the
    old one); returns the new entry ids, in order."""
    tmp = f"{AUDIT}:tampered"
    rel.redis.delete(tmp)
    ids = [str(rel.redis.xadd(tmp, {"record": json.dumps(r)}, id=f"{n + 1}-0"))
           for n, r in enumerate(records)]
    rel.redis.rename(tmp, AUDIT)
    return ids


@pytest.fixture
def chain(rel: RelStack) -> list[Record]:
    """A real chain written by a worker (every kind of step), then the worker stopped."""
    worker = rel.start_worker(concurrency=8)
    requests = rel.seeded_requests(12)
    requests[3]["reference"] = "0f0f0f0f-0000-4000-8000-000000000000"  # not_found
    rel.sim_client.set_faults("idpass", fail_next=[503, 503])  # retries on the record
    for request in requests:
        rel.producer.submit(request)
    rel.producer.submit(requests[0])  # a duplicate on the record
    rel.wait_results([r["request_id"] for r in requests], timeout=60)
    worker.stop()
    records = [r for _, r in rel.stream(AUDIT, "record")]
    assert len(records) > 30
    return records


def test_verify_of_the_untouched_chain_exits_0(rel: RelStack, chain: list[Record]) -> None:
    # Given the chain a worker wrote
    # When an operator runs `idvcancel audit verify`
    run = verify(rel)
    # Then it exits 0 and counts every record
    assert run.returncode == 0, run.stderr
    assert f"audit chain OK: {len(chain)} records" in run.stdout
    # and so it does after a faithful copy (new entry ids, same records)
    rewrite(rel, chain)
    assert verify(rel).returncode == 0


def _edit(position: int, field: str, value: Any, forge: bool = False
          ) -> Callable[[list[Record]], tuple[list[Record], int]]:
    def tamper(records: list[Record]) -> tuple[list[Record], int]:
        edited = copy.deepcopy(records)
        edited[position][field] = value
        if forge:
            edited[position] = reseal(edited[position])
            return edited, position + 1  # its own hash is fine: the next link breaks
        return edited, position

    return tamper


def _insert(after: int) -> Callable[[list[Record]], tuple[list[Record], int]]:
    def tamper(records: list[Record]) -> tuple[list[Record], int]:
        forged = reseal({**copy.deepcopy(records[after]), "step": "completed",
                         "outcome": "cancelled", "seq": records[after]["seq"] + 1,
                         "prev_hash": records[after]["hash"]})
        return [*records[:after + 1], forged, *records[after + 1:]], after + 2

    return tamper


def _insert_copy(position: int) -> Callable[[list[Record]], tuple[list[Record], int]]:
    def tamper(records: list[Record]) -> tuple[list[Record], int]:
        return [*records[:position], records[position - 2], *records[position:]], position

    return tamper


def _delete(position: int) -> Callable[[list[Record]], tuple[list[Record], int]]:
    def tamper(records: list[Record]) -> tuple[list[Record], int]:
        return [*records[:position], *records[position + 1:]], position

    return tamper


CASES = [
    pytest.param(_edit(10, "outcome", "cancelled"), "edited", id="edit-a-field"),
    pytest.param(_edit(10, "reference", "0f0f0f0f-1111-4000-8000-000000000000", forge=True),
                 "removed or inserted", id="edit-and-rehash"),
    pytest.param(_edit(0, "requested_by", "someone-else"), "edited", id="edit-the-first"),
    pytest.param(_insert(after=12), "removed or inserted", id="insert-a-forged-record"),
    pytest.param(_insert_copy(15), "removed or inserted", id="insert-a-copy"),
    pytest.param(_delete(12), "removed or inserted", id="delete-one"),
    pytest.param(_delete(0), "removed or inserted", id="delete-the-first"),
]


@pytest.mark.parametrize(("tamper", "reason"), CASES)
def test_verify_after_tampering_exits_1_naming_the_broken_record(
    rel: RelStack, chain: list[Record],
    tamper: Callable[[list[Record]], tuple[list[Record], int]], reason: str,
) -> None:
    # Given a chain with one record edited, inserted or deleted
    records, broken_at = tamper(chain)
    ids = rewrite(rel, records)
    # When an operator runs `idvcancel audit verify`
    run = verify(rel)
    # Then it exits 1, naming the record at which the chain breaks, and why
    assert run.returncode == 1, run.stdout + run.stderr
    seq = records[broken_at]["seq"]
    assert f"record {ids[broken_at]} (seq {seq}," in run.stderr, run.stderr
    assert reason in run.stderr
    # and putting the pristine chain back makes it verify again
    rewrite(rel, chain)
    assert verify(rel).returncode == 0


def test_verify_after_truncating_the_tail_exits_1(rel: RelStack, chain: list[Record]) -> None:
    # Given a chain whose last three records were cut off (the head still names the last)
    rewrite(rel, chain[:-3])
    # When it is verified / Then it exits 1
    run = verify(rel)
    assert run.returncode == 1, run.stdout


@pytest.fixture
def signer_env(tmp_path: Path) -> dict[str, str]:
    """The signer's environment: an Ed25519 key file (never in Redis) and the archive
    directory where checkpoints.jsonl goes."""
    key = tmp_path / "audit-signing.pem"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"IDVCANCEL_AUDIT_SIGNING_KEY": str(key),
            "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(tmp_path / "archive")}


def cli(rel: RelStack, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IDVCANCEL), *args],
                          env={**os.environ, "IDVCANCEL_REDIS_URL": rel.redis_url, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_edit_with_the_whole_tail_resealed_is_detected(rel: RelStack, chain: list[Record],
                                                        signer_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    # Given a checkpoint signed over the whole chain by the holder of the key, and the
    # public key a verifier was given
    signed = cli(rel, "audit", "checkpoint", env=signer_env)
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["checkpoints"][0]["seq"] == chain[-1]["seq"]
    public = tmp_path / "audit-public.pem"
    public.write_text(cli(rel, "audit", "public-key", env=signer_env).stdout)
    verifier_env = {"IDVCANCEL_AUDIT_ARCHIVE_DIR": signer_env["IDVCANCEL_AUDIT_ARCHIVE_DIR"]}
    assert cli(rel, "audit", "verify", "--public-key", str(public),
               env=verifier_env).returncode == 0
    # When a forger who can write Redis edits record 10 and re-seals every later record
    # and the head
    forged = copy.deepcopy(chain)
    forged[10]["outcome"] = "cancelled"
    for n in range(10, len(forged)):
        if n > 10:
            forged[n]["prev_hash"] = forged[n - 1]["hash"]
        forged[n] = reseal(forged[n])
    rewrite(rel, forged)
    rel.redis.set("idvcancel:audit:head", f"{forged[-1]['seq']}:{forged[-1]['hash']}")
    # Then the chain alone still verifies (what the key is for) ...
    assert verify(rel).returncode == 0
    # ... and with the public key, the checkpoint that no longer matches is named
    run = cli(rel, "audit", "verify", "--public-key", str(public), env=verifier_env)
    assert run.returncode == 1, run.stdout
    assert f"checkpoint #1 (records 1..{chain[-1]['seq']}" in run.stderr, run.stderr
    assert "do not match its signed Merkle root" in run.stderr
