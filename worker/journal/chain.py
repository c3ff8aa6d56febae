"""The audit chain: how records are linked, and how a chain is verified.

Each record carries ``seq``, ``prev_hash`` and ``hash`` where::

    hash = SHA-256(canonical JSON of the record without "hash")

and ``prev_hash`` is the previous record's ``hash`` (64 zeros for the first). Editing a
record breaks its own hash; removing or inserting one breaks the next record's link.

The canonical JSON is versioned, so that a verifier in any language can recompute it:
records sealed now carry ``"v": 2`` and are hashed over their RFC 8785 (JCS) form;
records without ``v`` (written before) keep the form they were sealed with, Python's
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. The exact
algorithm is in ``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785

from worker.contract import canonical_json

GENESIS = "0" * 64
#: The canonical form new records are sealed with (their ``"v"``): 2 = RFC 8785 (JCS).
VERSION = 2
#: The largest integer JSON carries exactly (RFC 8785 refuses larger ones).
_MAX_SAFE_INTEGER = 2**53 - 1


def record_hash(body: Mapping[str, Any]) -> str:
    """The hex SHA-256 a record without ``"hash"`` must carry, by its ``"v"``: JCS for
    ``v`` 2, the original Python canonical JSON for records without ``v``."""
    if body.get("v") == VERSION:
        return hashlib.sha256(jcs(dict(body))).hexdigest()
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def jcs(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``.

    A value without floats and with ASCII keys serializes the same under JCS and under
    ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` (the same
    string escapes, key order and integers), which is five times faster than the pure
    Python ``rfc8785``: most records take that path. Floats (ECMAScript's number forms)
    and anything else go through ``rfc8785`` (tests/unit/test_chain_versions.py checks
    both give the same bytes).
    """
    if _plain(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()
    return rfc8785.dumps(value)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER
    if isinstance(value, float):
        # Python's repr and ECMAScript's Number::toString both give the shortest digits
        # that round-trip, in fixed notation, for a fraction in this range; an integral
        # float ("12.0" against "12") and exponent forms take rfc8785's path.
        return 1e-4 <= abs(value) < 1e15 and not value.is_integer()
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


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
    record = {**draft, "v": VERSION, "seq": seq, "prev_hash": prev_hash}
    record["hash"] = record_hash(record)
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


#: Stand-ins for the three linking fields in a prepared record's text: random per
#: process, so that no value a record carries can contain one (``prepare`` checks).
_MARK = secrets.token_hex(16)
_SEQ, _PREV, _HASH = f"{_MARK}s", f"{_MARK}p", f"{_MARK}h"


@dataclass(frozen=True)
class Prepared:
    """A draft serialized once and linked on any head by ``link``: what a record costs
    to seal again when another process moved the head is three string substitutions and
    a SHA-256, not a second canonical serialization."""

    body: str  # the record without "hash", canonical, the stand-ins in place
    full: str  # the record with "hash", canonical: what the chain stores


def prepare(draft: Mapping[str, Any]) -> Prepared | dict[str, Any]:
    """``draft`` made ready to link; the draft itself in the unlikely case that its
    text holds a stand-in (``link`` then seals it the slow way)."""
    full = jcs({**draft, "v": VERSION, "seq": _SEQ, "prev_hash": _PREV,
                "hash": _HASH}).decode()
    if full.count(_MARK) != 3:  # a value holds a stand-in; else the three are ours
        return dict(draft)
    member = f'"hash":"{_HASH}"'
    # Canonical text is sorted and compact: the body is the text without that member
    # and one comma beside it ("hash" is never alone: "v", "seq" and "prev_hash" are there).
    at = full.index(member)
    end = at + len(member)
    body = full[:at] + full[end + 1:] if full[end] == "," else full[:at - 1] + full[end:]
    return Prepared(body.replace(f'"{_SEQ}"', _SEQ), full.replace(f'"{_SEQ}"', _SEQ))


def link(prepared: Sequence[Prepared | dict[str, Any]], head: str) -> tuple[list[str], str]:
    """Link prepared records in order after ``head``; return their canonical texts and
    the new head (the records ``seal_all`` would make, serialized)."""
    seq, digest = parse_head(head)
    texts = []
    for item in prepared:
        seq += 1
        if isinstance(item, Prepared):
            number = str(seq)
            body = item.body.replace(_SEQ, number).replace(_PREV, digest)
            new = hashlib.sha256(body.encode()).hexdigest()
            texts.append(item.full.replace(_SEQ, number).replace(_PREV, digest)
                         .replace(_HASH, new))
        else:
            record = seal(item, seq, digest)
            new = record["hash"]
            texts.append(jcs(record).decode())
        digest = new
    return texts, format_head(seq, digest)


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
        try:
            digest = record_hash(body)
        except (rfc8785.CanonicalizationError, ValueError, TypeError):
            digest = ""  # a value JCS cannot hold (a float NaN, a huge integer): not ours
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
