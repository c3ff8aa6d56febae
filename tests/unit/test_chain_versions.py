"""The language-neutral chain: records sealed now are hashed over their RFC 8785 (JCS)
form and say so (``"v": 2``); records written before, without ``v``, keep verifying
with the form they were sealed with, in Redis and in the archive files alike.

The Node.js verifier that recomputes the same hashes with another JCS implementation is
tests/integration/test_audit_node.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fakeredis
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import keys
from worker.contract import canonical_json
from worker.journal import chain as audit
from worker.journal.archive import archive_audit
from worker.journal.verify import verify_archive, verify_redis

#: 2024-11-24 00:00:00 UTC in ms.
MIDNIGHT = 1_732_406_400_000


def old_seal(draft: dict[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """How records were sealed before the change (no ``v``, Python's canonical JSON)."""
    record = {**draft, "seq": seq, "prev_hash": prev_hash}
    record["hash"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
    return record


def old_chain(n: int) -> list[dict[str, Any]]:
    records, prev = [], audit.GENESIS
    for i in range(n):
        record = old_seal({"step": "attempt", "request_id": f"old-{i}", "duration_ms": 1.0},
                          i + 1, prev)
        prev = record["hash"]
        records.append(record)
    return records


def store(client: fakeredis.FakeRedis, records: list[dict[str, Any]], at_ms: int) -> None:
    for i, record in enumerate(records):
        client.xadd(keys.AUDIT, {"record": canonical_json(record)}, id=f"{at_ms + i}-0")
    client.set(keys.AUDIT_HEAD, f"{records[-1]['seq']}:{records[-1]['hash']}")


def test_a_new_record_is_hashed_over_its_rfc8785_form() -> None:
    # Given a draft with what JCS and Python's json disagree on: an integral float,
    # an exponent, non-ASCII text and keys whose order is not alphabetical
    draft = {"step": "attempt", "duration_ms": 12.0, "delay_s": 1e-7, "reason": "fraude é",
             "attempt": 2}
    # When it is sealed as the first record
    record = audit.seal(draft, 1, audit.GENESIS)
    # Then it says which form it was hashed over, and the hash is SHA-256 of exactly
    # these bytes (written out by hand from RFC 8785: sorted keys, ES number forms)
    assert record["v"] == 2
    expected = ('{"attempt":2,"delay_s":1e-7,"duration_ms":12,"prev_hash":"' + "0" * 64
                + '","reason":"fraude é","seq":1,"step":"attempt","v":2}').encode()
    assert record["hash"] == hashlib.sha256(expected).hexdigest()
    # and Python's own canonical JSON would have given another hash
    body = {k: v for k, v in record.items() if k != "hash"}
    assert hashlib.sha256(canonical_json(body).encode()).hexdigest() != record["hash"]


def test_a_chain_written_before_the_change_still_verifies_and_edits_are_still_caught(
) -> None:
    # Given five records sealed the old way, and new records continuing after them
    records = old_chain(5)
    new, _ = audit.seal_all([{"step": "received", "i": i} for i in range(3)],
                            audit.format_head(5, records[-1]["hash"]))
    chain = [(f"{n}-0", r) for n, r in enumerate([*records, *new])]
    # When the mixed chain is verified
    # Then every record verifies, each with the form it was sealed with
    assert audit.verify(chain) == (8, None)
    # And an edit of an old record is still named
    chain[2][1]["request_id"] = "forged"
    count, broken = audit.verify(chain)
    assert count == 2 and broken is not None and "edited" in broken.reason


def test_adding_v_to_an_old_record_is_an_edit() -> None:
    # Given an old record (hashed the old way)
    record = old_chain(1)[0]
    # When someone adds "v": 2 to make it read as a JCS record
    forged = {**record, "v": 2}
    # Then it no longer verifies
    _, broken = audit.verify([("1-0", forged)])
    assert broken is not None and "edited" in broken.reason


def test_old_records_in_the_archive_and_new_ones_in_redis_verify_as_one_chain(
        fake_redis: fakeredis.FakeRedis, tmp_path: Path) -> None:
    # Given an old chain in Redis, archived to the files
    old = old_chain(4)
    store(fake_redis, old, MIDNIGHT)
    report = archive_audit(fake_redis, tmp_path, older_than_seconds=0,
                           now=MIDNIGHT / 1000 + 60)
    assert report.archived == 4
    # and new records appended after it in Redis
    new, head = audit.seal_all([{"step": "received"}, {"step": "completed"}],
                               str(fake_redis.get(keys.AUDIT_HEAD)))
    store(fake_redis, new, MIDNIGHT + 100_000)
    # When the chain is verified from Redis alone and from the archive on
    # Then both walks pass: the old records in the files, the new ones in Redis
    assert verify_redis(fake_redis).broken is None
    whole = verify_archive(fake_redis, tmp_path)
    assert whole.broken is None and (whole.in_archive, whole.in_redis) == (4, 2)
    assert head == f"6:{new[-1]['hash']}"


_SAFE = 2**53 - 1
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-_SAFE, _SAFE) | _TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(max_codepoint=127), max_size=8), inner,
                      max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(st.text(max_size=8), _JSON, max_size=6))
def test_the_fast_serialization_gives_the_bytes_of_rfc8785(value: dict[str, Any]) -> None:
    # Given any JSON object (text, control characters and astral characters included)
    # When it is serialized for hashing
    # Then the bytes are exactly RFC 8785's, whichever path was taken
    assert audit.jcs(value) == rfc8785.dumps(value)


@settings(max_examples=400, deadline=None)
@given(value=st.floats(min_value=-1e16, max_value=1e16) | st.floats(min_value=-1e-3,
                                                                       max_value=1e-3))
def test_a_float_serializes_as_rfc8785_whichever_path_it_takes(value: float) -> None:
    # Given a float around the edges of the fast path (exponent forms, integral values)
    # When it is serialized for hashing, alone and inside a record
    # Then the bytes are RFC 8785's
    assert audit.jcs(value) == rfc8785.dumps(value)
    assert audit.jcs({"duration_ms": value}) == rfc8785.dumps({"duration_ms": value})


@settings(max_examples=200, deadline=None)
@given(drafts=st.lists(st.dictionaries(st.text(max_size=8), _JSON, max_size=6), min_size=1,
                       max_size=4),
       seq=st.integers(0, 10**9))
def test_a_prepared_record_links_to_exactly_the_record_seal_makes(
        drafts: list[dict[str, Any]], seq: int) -> None:
    # Given drafts serialized once, ahead of knowing the head
    prepared = [audit.prepare(d) for d in drafts]
    head = audit.format_head(seq, hashlib.sha256(str(seq).encode()).hexdigest())
    # When they are linked on a head (as a journal does again when another process
    # moved it)
    texts, new_head = audit.link(prepared, head)
    # Then each text is the JCS form of the record seal_all makes, and the head the same
    sealed, sealed_head = audit.seal_all(drafts, head)
    assert texts == [audit.jcs(r).decode() for r in sealed]
    assert new_head == sealed_head


def test_a_draft_holding_the_stand_in_text_is_sealed_the_slow_way_and_still_verifies(
) -> None:
    # Given a draft whose value happens to contain the text the fast path stands in with
    draft = {"step": "attempt", "reason": f"x{audit._MARK}h"}
    # When it is prepared and linked
    prepared = audit.prepare(draft)
    texts, _ = audit.link([prepared], "")
    # Then it was not templated, and the record verifies with that value intact
    assert not isinstance(prepared, audit.Prepared)
    record = json.loads(texts[0])
    assert record["reason"] == draft["reason"]
    assert audit.verify([("1-0", record)]) == (1, None)
