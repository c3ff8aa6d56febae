"""Receipts: one request's audit records with the proof that each is in the signed log.

A compliance officer asked "did this cancel or deletion happen, and how do you know?"
files a receipt: the request (the fields its audit records carry: no personal data), its
outcome, its confirmation (``worker.delivery.confirm``), every audit record of it and, for each
record, an RFC 9162 inclusion proof up to a checkpoint signed with the audit key
(``worker.journal.checkpoints``) — or the plain statement that it is pending until the next
checkpoint. Anyone holding the public key checks it offline, without our code or access
to our Redis: each record's hash, each proof to its checkpoint's Merkle root, each
checkpoint's signature, and that the summary fields are what the records say.

The receipt is written in its RFC 8785 form (one line), and ``verify`` requires exactly
those bytes, so that changing any byte of the file — even whitespace — is caught. The
format, with a worked example: ``docs/audit.md``.

Errors, as a tree::

    ReceiptError                 no receipt can be made (no record of the request; the
                                 chain's records cannot be read)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from worker.journal import chain as audit
from worker.journal import checkpoints, merkle

FORMAT = "idvcancel-receipt/1"
PENDING = "pending until the next checkpoint"
#: The request as its receipt shows it: the fields every audit record of it carries.
REQUEST_FIELDS = ("request_id", "provider", "action", "reference", "source", "requested_by",
                  "reason")
#: Steps that end a request (its outcome), and the confirmation steps.
OUTCOME_STEPS = frozenset({"completed", "rejected"})
CONFIRMATION_STEPS = frozenset({"confirmed", "confirmation_failed"})
_TOP = ("format", "request_id", "request", "outcome", "confirmation", "records", "checkpoints")
_PROOF = ("checkpoint", "leaf_index", "tree_size", "path")


class ReceiptError(Exception):
    """No receipt can be made for the request."""


def summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The receipt's summary fields, as the records say them: the request (from the first
    record), the outcome of the last step that ended it, the last confirmation."""
    first = records[0]
    outcome = next((r.get("outcome") for r in reversed(records)
                    if r.get("step") in OUTCOME_STEPS), None)
    confirmation = next((r.get("step") for r in reversed(records)
                         if r.get("step") in CONFIRMATION_STEPS), None)
    return {"request": {k: first.get(k) for k in REQUEST_FIELDS}, "outcome": outcome,
            "confirmation": confirmation}


def build(client: redis.Redis, request_id: str,
          archive_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The receipt of ``request_id``: one pass over the chain (archive files, then Redis),
    keeping the leaves of the checkpoints that cover one of its records."""
    signed = [c for _, c in checkpoints.read_checkpoints(client)
              if isinstance(c.get("seq"), int) and isinstance(c.get("first_seq"), int)]
    mine: list[tuple[dict[str, Any], int | None, int]] = []  # record, checkpoint, leaf
    proofs: dict[int, list[bytes]] = {}  # checkpoint index -> the path of each of ours
    index, wanted = 0, False
    leaves: list[bytes] = []
    try:
        for entry in checkpoints.iter_chain(client, archive_dir):
            record, seq = dict(entry.record), entry.record.get("seq")
            if not isinstance(seq, int):
                continue
            while index < len(signed) and seq > signed[index]["seq"]:
                index, leaves, wanted = index + 1, [], False
            covered = index < len(signed) and signed[index]["first_seq"] <= seq
            if covered:
                leaves.append(bytes.fromhex(str(record.get("hash"))))
            if record.get("request_id") == request_id:
                mine.append((record, index if covered else None, len(leaves) - 1))
                wanted = wanted or covered
            if covered and seq == signed[index]["seq"]:
                if wanted:
                    proofs[index] = leaves
                index, leaves, wanted = index + 1, [], False
    except ValueError as exc:  # a hash that is not hex: the chain itself is broken
        raise ReceiptError(f"the audit chain cannot be read ({exc}): run 'idvcancel audit "
                           "verify'") from exc
    if not mine:
        raise ReceiptError(f"no audit record of request {request_id!r}")
    used = sorted({c for _, c, _ in mine if c is not None and c in proofs})
    position = {c: n for n, c in enumerate(used)}
    items: list[dict[str, Any]] = []
    for record, cp, leaf in mine:
        if cp is None or cp not in proofs:
            items.append({"record": record, "proof": None, "pending": PENDING})
            continue
        tree = proofs[cp]
        items.append({"record": record, "proof": {
            "checkpoint": position[cp], "leaf_index": leaf, "tree_size": len(tree),
            "path": [h.hex() for h in merkle.inclusion_proof(tree, leaf)]}})
    return {"format": FORMAT, "request_id": request_id, **summary([r for r, _, _ in mine]),
            "records": items, "checkpoints": [signed[c] for c in used]}


def dumps(receipt: Mapping[str, Any]) -> bytes:
    """The receipt's bytes: its RFC 8785 form and a newline (what ``verify`` requires)."""
    return audit.jcs(dict(receipt)) + b"\n"


# -- verifying ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptReport:
    """A receipt's verification: what it proves, or the first thing that fails."""

    request_id: str | None
    outcome: str | None
    confirmation: str | None
    proven: int
    checkpoints: int
    failure: str | None


def verify(data: bytes, public_key: Ed25519PublicKey) -> ReceiptReport:
    """Check a receipt's bytes offline with the audit public key."""
    try:
        receipt = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return _failed(None, f"not a receipt: it is not JSON ({exc})")
    if not isinstance(receipt, dict) or sorted(receipt) != sorted(_TOP):
        return _failed(None, f"not a receipt: it must have exactly the fields {', '.join(_TOP)}")
    request_id = receipt.get("request_id")
    failure = _check(receipt, public_key)
    if failure is None and dumps(receipt) != data:
        failure = ("the file is not the receipt's canonical form (RFC 8785, one line): it "
                   "was edited or reformatted")
    if failure is not None:
        return _failed(request_id if isinstance(request_id, str) else None, failure)
    return ReceiptReport(request_id, receipt["outcome"], receipt["confirmation"],
                         len(receipt["records"]), len(receipt["checkpoints"]), None)


def _failed(request_id: str | None, failure: str) -> ReceiptReport:
    return ReceiptReport(request_id, None, None, 0, 0, failure)


def _check(receipt: Mapping[str, Any], public_key: Ed25519PublicKey) -> str | None:
    if receipt["format"] != FORMAT:
        return f"unknown receipt format {receipt['format']!r} (expected {FORMAT})"
    signed, items = receipt["checkpoints"], receipt["records"]
    if not isinstance(signed, list) or not isinstance(items, list) or not items:
        return "checkpoints and records must be lists, with at least one record"
    for n, checkpoint in enumerate(signed):
        reason = checkpoints.problem(checkpoint, public_key)
        if reason is not None:
            return f"checkpoint {n}: {reason}"
    records: list[Mapping[str, Any]] = []
    last_seq = 0
    for n, item in enumerate(items):
        failure = _check_item(n, item, receipt["request_id"], signed, last_seq)
        if failure is not None:
            return failure
        records.append(item["record"])
        last_seq = int(item["record"]["seq"])
    used = {item["proof"]["checkpoint"] for item in items if item["proof"] is not None}
    if used != set(range(len(signed))):
        return "a checkpoint is given that no record's proof uses"
    expected = summary(records)
    for name in ("request", "outcome", "confirmation"):
        if receipt[name] != expected[name]:
            return f"its {name} is not what its records say ({expected[name]!r})"
    pending = [item["record"] for item in items if item["proof"] is None]
    if pending:
        first = pending[0]
        return (f"record seq {first['seq']} ({first.get('step')}) is not proven yet: "
                f"{PENDING}; ask for the receipt again after it")
    return None


def _check_item(n: int, item: Any, request_id: Any, signed: Sequence[Mapping[str, Any]],
                last_seq: int) -> str | None:
    where = f"record {n}"
    if not isinstance(item, dict) or not isinstance(item.get("record"), dict):
        return f"{where}: not a {{\"record\": ..., \"proof\": ...}} entry"
    record = item["record"]
    seq = record.get("seq")
    if isinstance(seq, int):
        where = f"record {n} (seq {seq}, step {record.get('step')})"
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        if audit.record_hash(body) != record.get("hash"):
            return f"{where}: its hash does not match its content (edited)"
    except (ValueError, TypeError):
        return f"{where}: its content cannot be hashed (edited)"
    if record.get("request_id") != request_id:
        return f"{where}: it belongs to another request ({record.get('request_id')!r})"
    if not isinstance(seq, int) or seq <= last_seq:
        return f"{where}: records must be in chain order"
    proof = item.get("proof")
    if proof is None:
        if sorted(item) != ["pending", "proof", "record"] or item["pending"] != PENDING:
            return f"{where}: without a proof, it must say {PENDING!r}"
        if any(c["seq"] >= seq for c in signed):
            return f"{where}: it is marked pending but a checkpoint given covers it"
        return None
    if sorted(item) != ["proof", "record"] or not isinstance(proof, dict) or sorted(
            proof) != sorted(_PROOF):
        return f"{where}: its proof must have exactly {', '.join(_PROOF)}"
    return _check_proof(where, record, proof, signed)


def _check_proof(where: str, record: Mapping[str, Any], proof: Mapping[str, Any],
                 signed: Sequence[Mapping[str, Any]]) -> str | None:
    cp, leaf, size, path = (proof[k] for k in _PROOF)
    if not isinstance(cp, int) or isinstance(cp, bool) or not 0 <= cp < len(signed):
        return f"{where}: its proof names no checkpoint given"
    checkpoint = signed[cp]
    seq = int(record["seq"])
    if not checkpoint["first_seq"] <= seq <= checkpoint["seq"]:
        return f"{where}: checkpoint {cp} does not cover it"
    if leaf != seq - checkpoint["first_seq"] or size != (
            checkpoint["seq"] - checkpoint["first_seq"] + 1):
        return f"{where}: its leaf index or tree size is not its place in checkpoint {cp}"
    try:
        siblings = [bytes.fromhex(h) for h in path]
        root = merkle.root_from_inclusion(bytes.fromhex(str(record["hash"])), leaf, size,
                                          siblings)
    except (ValueError, TypeError):
        return f"{where}: its proof is not a list of hex hashes"
    if root is None or root.hex() != checkpoint["merkle_root"]:
        return f"{where}: its proof does not lead to the Merkle root of checkpoint {cp}"
    return None
