"""Receipts on fakeredis: what one holds, that it verifies offline with the public key
alone, that a record not yet under a checkpoint says so (and does not pass), and that
changing any single byte of the file is caught and named.

The CLI end to end, with confirmations: tests/integration/test_confirm_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from worker import keys
from worker.contract import canonical_json
from worker.journal import chain as audit
from worker.journal import receipts
from worker.journal.checkpoints import Signer, load_public_key, write_checkpoints

REQUEST = {"request_id": "r-1", "provider": "idpass", "action": "cancel",
           "reference": "fe4291ca-d831-4760-96df-c9cb03b3cd95", "source": "api",
           "requested_by": "billing", "reason": "duplicate application"}


def append(client: fakeredis.FakeRedis, drafts: list[dict[str, Any]]) -> None:
    sealed, head = audit.seal_all(drafts, str(client.get(keys.AUDIT_HEAD) or ""))
    for record in sealed:
        client.xadd(keys.AUDIT, {"record": canonical_json(record)})
    client.set(keys.AUDIT_HEAD, head)


def step(name: str, request_id: str = "r-1", **details: Any) -> dict[str, Any]:
    return {**REQUEST, "request_id": request_id, "step": name, "at": "2026-12-01T09:30:00Z",
            "task_id": "t-1", **details}


def others(n: int) -> list[dict[str, Any]]:
    return [step("received", request_id=f"other-{i}") for i in range(n)]


def sign(client: fakeredis.FakeRedis, signer: Signer) -> None:
    write_checkpoints(client, signer, origin="test", archive_dir=None, max_records=1000)


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def proven(fake_redis: fakeredis.FakeRedis, signer: Signer) -> bytes:
    """The receipt of r-1: its records among others', under two checkpoints."""
    append(fake_redis, [*others(3), step("received"), *others(2), step("attempt", attempt=1,
           http_status=200, duration_ms=12.5)])
    sign(fake_redis, signer)
    append(fake_redis, [*others(4), step("completed", outcome="cancelled", error=None,
                                         attempts=1), *others(1),
                        step("confirmed", outcome="cancelled", provider_status="cancelled")])
    sign(fake_redis, signer)
    return receipts.dumps(receipts.build(fake_redis, "r-1", None))


def test_a_receipt_holds_the_request_its_outcome_and_a_proof_per_record(
        proven: bytes, signer: Signer) -> None:
    # Given the receipt of a request carried out and confirmed
    receipt = json.loads(proven)
    # Then it names the request (the audited fields only), its outcome and confirmation
    assert receipt["format"] == "idvcancel-receipt/1"
    assert receipt["request"] == REQUEST
    assert (receipt["outcome"], receipt["confirmation"]) == ("cancelled", "confirmed")
    # and holds its four records, each with a proof up to one of two signed checkpoints
    assert [i["record"]["step"] for i in receipt["records"]] == [
        "received", "attempt", "completed", "confirmed"]
    assert [i["proof"]["checkpoint"] for i in receipt["records"]] == [0, 0, 1, 1]
    assert len(receipt["checkpoints"]) == 2
    # and it verifies with the public key alone
    report = receipts.verify(proven, signer.public_key)
    assert report.failure is None
    assert (report.request_id, report.outcome, report.proven, report.checkpoints) == (
        "r-1", "cancelled", 4, 2)


def test_a_record_after_the_last_checkpoint_is_pending_until_the_next(
        fake_redis: fakeredis.FakeRedis, signer: Signer) -> None:
    # Given a request whose last record came after the last checkpoint
    append(fake_redis, [step("received"), *others(2)])
    sign(fake_redis, signer)
    append(fake_redis, [step("completed", outcome="cancelled")])
    # When its receipt is made
    data = receipts.dumps(receipts.build(fake_redis, "r-1", None))
    # Then that record says it is pending, and the receipt does not pass as proven
    pending = json.loads(data)["records"][1]
    assert pending["proof"] is None and pending["pending"] == "pending until the next checkpoint"
    report = receipts.verify(data, signer.public_key)
    assert report.failure is not None
    assert "record seq 4 (completed) is not proven yet: pending" in report.failure
    # And once the next checkpoint is signed, the new receipt proves every record
    sign(fake_redis, signer)
    again = receipts.dumps(receipts.build(fake_redis, "r-1", None))
    assert receipts.verify(again, signer.public_key).failure is None


def test_an_unknown_request_has_no_receipt(fake_redis: fakeredis.FakeRedis) -> None:
    # Given a chain without any record of r-9
    append(fake_redis, others(2))
    # Then it has no receipt, and the error says so
    with pytest.raises(receipts.ReceiptError, match="no audit record of request 'r-9'"):
        receipts.build(fake_redis, "r-9", None)


def test_every_single_byte_changed_is_caught(proven: bytes, signer: Signer) -> None:
    # Given a receipt that verifies
    assert receipts.verify(proven, signer.public_key).failure is None
    # When any one byte of it is changed
    for position in range(len(proven)):
        changed = bytearray(proven)
        changed[position] ^= 0x01 if chr(proven[position]) != "0" else 0x02
        # Then it no longer verifies, and says why
        report = receipts.verify(bytes(changed), signer.public_key)
        assert report.failure, f"byte {position} ({chr(proven[position])!r}) not caught"


@pytest.mark.parametrize(("edit", "named"), [
    (lambda r: r["records"][1]["record"].update(http_status=404),
     "record 1 (seq 7, step attempt): its hash does not match its content"),
    (lambda r: r["records"][2]["proof"]["path"].reverse(),
     "record 2 (seq 12, step completed): its proof does not lead to the Merkle root"),
    (lambda r: r.update(outcome="deleted"),
     "its outcome is not what its records say ('cancelled')"),
    (lambda r: r["request"].update(requested_by="someone-else"),
     "its request is not what its records say"),
    (lambda r: r["checkpoints"][1].update(merkle_root="0" * 64),
     "checkpoint 1: its signature does not verify"),
    (lambda r: r["records"].pop(3), "its confirmation is not what its records say"),
])
def test_what_was_changed_is_named(proven: bytes, signer: Signer, edit: Any,
                                   named: str) -> None:
    # Given a receipt changed the way a forger would (and written out canonically again)
    receipt = json.loads(proven)
    edit(receipt)
    # Then verification names what no longer holds
    report = receipts.verify(receipts.dumps(receipt), signer.public_key)
    assert report.failure is not None and named in report.failure, report.failure


def test_a_receipt_checked_with_another_key_fails(proven: bytes) -> None:
    # Given a verifier holding another public key than the one that signed
    other = Signer(Ed25519PrivateKey.generate())
    # Then the receipt's checkpoint is named as signed by another key
    report = receipts.verify(proven, other.public_key)
    assert report.failure is not None and "signed by another key" in report.failure


def test_a_reformatted_receipt_is_not_the_receipt(proven: bytes, signer: Signer) -> None:
    # Given the same receipt pretty-printed (its content unchanged)
    pretty = json.dumps(json.loads(proven), indent=2).encode()
    # Then it is refused: the receipt is its canonical bytes
    report = receipts.verify(pretty, signer.public_key)
    assert report.failure is not None and "canonical form" in report.failure


def test_the_documented_example_verifies() -> None:
    # Given the worked example of docs/audit.md and its key
    docs = Path(__file__).resolve().parents[2] / "docs" / "examples"
    key = load_public_key(str(docs / "audit-public-example.pem"))
    # Then it verifies as the document says, and the figures it quotes are its own
    data = (docs / "receipt-r-1.json").read_bytes()
    report = receipts.verify(data, key)
    assert report.failure is None and (report.proven, report.checkpoints) == (4, 1)
    receipt = json.loads(data)
    assert receipt["checkpoints"][0]["merkle_root"].startswith("e62a51ed")
    assert receipt["records"][3]["proof"]["path"][0].startswith("9120e0fb")
