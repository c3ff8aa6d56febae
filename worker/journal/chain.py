"""The audit chain: how records are linked, and how a chain is verified.

Each record carries ``seq``, ``prev_hash`` and ``hash`` where::

    hash = SHA-256(canonical JSON of the record without "hash")

and ``prev_hash`` is the previous record's ``hash`` (64 zeros for the first). Editing a
record breaks its own hash; removing or inserting one breaks the next record's link.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.contract import canonical_json

GENESIS = "0" * 64


def parse_head(head: str) -> tuple[int, str]:
    """``"<seq>:<hash>"`` → (seq, hash); the empty chain is (0, GENESIS)."""
    if not head:
        return 0, GENESIS
    seq, _, digest = head.partition(":")
    return int(seq), digest


def format_head(seq: int, digest: str) -> str:
    return f"{seq}:{digest}"


def seal(draft: Mapping[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """Link ``draft`` after ``prev_hash`` as record number ``seq``."""
    record = {**draft, "seq": seq, "prev_hash": prev_hash}
    record["hash"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
    return record


def seal_all(
    drafts: Iterable[Mapping[str, Any]], head: str
) -> tuple[list[dict[str, Any]], str]:
    """Seal ``drafts`` in order after ``head``; return the records and the new head."""
    seq, digest = parse_head(head)
    records = []
    for draft in drafts:
        seq += 1
        record = seal(draft, seq, digest)
        digest = record["hash"]
        records.append(record)
    return records, format_head(seq, digest)


@dataclass(frozen=True)
class BrokenLink:
    """The first record at which a chain stops verifying."""

    position: int  # 0-based index in what was walked
    record_id: str  # stream entry id (or archive line)
    seq: int | None
    reason: str

    def describe(self) -> str:
        return f"record {self.record_id} (seq {self.seq}, position {self.position}): {self.reason}"


def verify(
    records: Iterable[tuple[str, Mapping[str, Any]]], *, start: str = GENESIS
) -> tuple[int, BrokenLink | None]:
    """Walk ``(record_id, record)`` pairs; return how many verified and the first break.

    Parameters:
        records: in chain order.
        start: the ``prev_hash`` the first record must carry (an archive cut continues
            from the last archived hash).
    """
    expected_prev = start
    expected_seq: int | None = None
    count = 0
    for position, (record_id, record) in enumerate(records):
        seq = record.get("seq")
        body = {k: v for k, v in record.items() if k != "hash"}
        digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        reason = None
        if digest != record.get("hash"):
            reason = "its hash does not match its content (edited)"
        elif record.get("prev_hash") != expected_prev:
            reason = "its prev_hash does not match the record before it (removed or inserted)"
        elif expected_seq is not None and seq != expected_seq:
            reason = f"sequence jumps from {expected_seq - 1} to {seq} (removed or inserted)"
        if reason:
            return count, BrokenLink(position, record_id, seq if isinstance(seq, int) else None,
                                     reason)
        expected_prev = str(record["hash"])
        expected_seq = int(seq) + 1 if isinstance(seq, int) else None
        count += 1
    return count, None
