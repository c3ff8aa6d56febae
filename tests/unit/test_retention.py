"""Retention: the audit archive (fakeredis: its Lua runs there too), the ledger TTL of
each phase (the pipeline on fakeredis and a mock transport), the intake index and the
settings.

The same behaviours run against a real Redis and real workers in
tests/integration/test_retention_e2e.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import fakeredis
import httpx
import pytest
from pydantic import ValidationError

from config.celery import celery_config
from config.settings import Settings
from worker import keys
from worker.contract import canonical_json
from worker.delivery.pipeline import Finished, Pipeline, RetryLater
from worker.errors import ArchiveBusy, ArchiveMismatch
from worker.journal import archive as journal_archive
from worker.journal import chain as audit
from worker.journal import verify as journal_verify
from worker.journal.archive import archive_audit
from worker.journal.ledger import read
from worker.journal.steps import Journal
from worker.journal.verify import archived_head, verify_archive, verify_redis
from worker.ops import deadletters, retention
from worker.providers.idpass import IdPassAdapter

#: 2024-11-24 00:00:00 UTC in ms: records just before it go to the 23rd's file.
MIDNIGHT = 1_732_406_400_000
DAY_BEFORE, DAY = "audit-2024-11-23.jsonl", "audit-2024-11-24.jsonl"


def write_chain(client: fakeredis.FakeRedis, n: int, *, at_ms: int, step_ms: int = 1000
                ) -> list[str]:
    """Append ``n`` sealed records to the audit stream with ids from ``at_ms`` on, the way
    the journal does (the chain head moves with them); returns their ids."""
    head = str(client.get(keys.AUDIT_HEAD) or "")
    sealed, new_head = audit.seal_all(
        ({"step": "received", "request_id": f"r-{at_ms}-{i}"} for i in range(n)), head)
    ids = [str(client.xadd(keys.AUDIT, {"record": canonical_json(r)},
                           id=f"{at_ms + i * step_ms}-0")) for i, r in enumerate(sealed)]
    client.set(keys.AUDIT_HEAD, new_head)
    return ids


def stream(client: fakeredis.FakeRedis) -> list[tuple[str, dict[str, str]]]:
    """The audit stream's entries, oldest first."""
    return cast("list[tuple[str, dict[str, str]]]", client.xrange(keys.AUDIT))


def rewrite(client: fakeredis.FakeRedis, entries: list[tuple[str, dict[str, str]]]) -> None:
    """Replace the audit stream by ``entries`` (a stream cannot be edited in place: copy
    to a new one and RENAME it over, as a tamperer would)."""
    client.delete("tampered")
    for entry_id, fields in entries:
        client.xadd("tampered", dict[Any, Any](fields), id=entry_id)
    client.rename("tampered", keys.AUDIT)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seconds(ms: int) -> float:
    return ms / 1000


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def two_days(fake_redis: fakeredis.FakeRedis) -> list[str]:
    """Five records late on the 23rd, five early on the 24th (UTC)."""
    return [*write_chain(fake_redis, 5, at_ms=MIDNIGHT - 10_000),
            *write_chain(fake_redis, 5, at_ms=MIDNIGHT + 1_000)]


# -- archiving ---------------------------------------------------------------------------


def test_records_older_than_the_cut_move_to_day_files_and_both_chains_verify(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    # Given ten records over two UTC days
    # When everything older than 3.5 s past midnight is archived
    report = archive_audit(fake_redis, archive_dir, older_than_seconds=10,
                           now=seconds(MIDNIGHT + 3_500) + 10)
    # Then the 23rd's five and the 24th's first three are in their day files, one line each
    assert report.archived == 8 and report.broken is None
    assert report.files == (DAY_BEFORE, DAY)
    assert [e["id"] for e in lines(archive_dir / DAY_BEFORE)] == two_days[:5]
    assert [e["id"] for e in lines(archive_dir / DAY)] == two_days[5:8]
    assert all(set(e) == {"id", "record"} for e in lines(archive_dir / DAY))
    # and only the other two are left in Redis
    assert [i for i, _ in stream(fake_redis)] == two_days[8:]
    # and the archived head is the last record moved
    head = archived_head(fake_redis)
    assert head is not None and head.entry_id == two_days[7] and head.seq == 8
    assert head.hash == lines(archive_dir / DAY)[-1]["record"]["hash"] and head.records == 8
    # and Redis alone verifies from that head, and the archive plus Redis from the start
    alone = verify_redis(fake_redis)
    assert alone.broken is None and alone.count == 2
    whole = verify_archive(fake_redis, archive_dir)
    assert whole.broken is None and (whole.in_archive, whole.in_redis) == (8, 2)


def test_the_chain_keeps_growing_after_a_cut(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path) -> None:
    # Given a journal that writes, an archive of everything, and the journal writing on
    journal = Journal(fake_redis)
    for i in range(3):
        journal.apply(f"idvcancel:req:a{i}", 0, ledger={"phase": "done"},
                      records=[{"step": "received"}, {"step": "completed"}])
    assert archive_audit(fake_redis, archive_dir, 0, time.time() + 1).archived == 6
    assert fake_redis.xlen(keys.AUDIT) == 0
    time.sleep(0.002)
    for i in range(2):
        journal.apply(f"idvcancel:req:b{i}", 0, ledger={"phase": "done"},
                      records=[{"step": "received"}])
    # When both are verified
    alone, whole = verify_redis(fake_redis), verify_archive(fake_redis, archive_dir)
    # Then the new records link to the archived ones across the cut
    assert alone.broken is None and alone.count == 2
    assert whole.broken is None and whole.count == 8
    # and archiving again moves only the new ones, after the old ones in the same file
    again = archive_audit(fake_redis, archive_dir, 0, time.time() + 1)
    assert again.archived == 2
    assert verify_archive(fake_redis, archive_dir).in_archive == 8


def test_nothing_due_moves_nothing(fake_redis: fakeredis.FakeRedis, archive_dir: Path,
                                   two_days: list[str]) -> None:
    # When the cut is before every record
    report = archive_audit(fake_redis, archive_dir, 3600, seconds(MIDNIGHT))
    # Then nothing moves and no head is recorded
    assert report.archived == 0 and report.head is None and report.files == ()
    assert fake_redis.xlen(keys.AUDIT) == 10
    assert verify_redis(fake_redis).count == 10


def test_a_run_interrupted_after_the_fsync_leaves_copies_that_verification_skips(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = seconds(MIDNIGHT + 60_000)
    # Given a run that dies after writing its first page of 4, before recording and trimming
    archive_audit(fake_redis, archive_dir, 0, now, page=4, max_records=4)
    monkeypatch.setattr(journal_archive, "_commit_script", lambda client: client.register_script(
        "return redis.error_reply('crashed')"))
    with pytest.raises(Exception, match="crashed"):
        archive_audit(fake_redis, archive_dir, 0, now, page=3)
    monkeypatch.undo()
    # Then the three records are in the file and still in Redis, and both walks pass
    assert [e["id"] for e in lines(archive_dir / DAY_BEFORE)] == two_days[:5]
    assert [e["id"] for e in lines(archive_dir / DAY)] == two_days[5:7]
    assert fake_redis.xlen(keys.AUDIT) == 6
    assert verify_redis(fake_redis).broken is None
    assert verify_archive(fake_redis, archive_dir).broken is None
    # When the next run archives the rest
    report = archive_audit(fake_redis, archive_dir, 0, now)
    # Then they are written again (copies), Redis is empty, and the copies are skipped
    assert report.archived == 6 and fake_redis.xlen(keys.AUDIT) == 0
    whole = verify_archive(fake_redis, archive_dir)
    assert whole.broken is None and whole.count == 10 and whole.duplicates == 3


def test_a_line_cut_short_by_a_crash_is_cut_off_before_the_next_append(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path) -> None:
    first = write_chain(fake_redis, 3, at_ms=MIDNIGHT - 10_000)
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT - 6_000))
    # Given a half-written line at the end of the file (a crash mid-write)
    with (archive_dir / DAY_BEFORE).open("ab") as file:
        file.write(b'{"id":"' + str(MIDNIGHT - 5_000).encode() + b'-0","rec')
    # Then verification ignores it (it was never committed)
    assert verify_archive(fake_redis, archive_dir).broken is None
    # When the next run appends to that file
    more = write_chain(fake_redis, 2, at_ms=MIDNIGHT - 5_000)
    report = archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT))
    # Then the torn line was cut off first and every line is whole
    assert report.repaired == (DAY_BEFORE,)
    assert [e["id"] for e in lines(archive_dir / DAY_BEFORE)] == first + more
    assert verify_archive(fake_redis, archive_dir).count == 5


def test_an_edited_archive_line_is_named_by_file_and_line(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    # Given the third line of the 24th's file edited
    path = archive_dir / DAY
    entries = lines(path)
    entries[2]["record"]["request_id"] = "someone-else"
    path.write_text("".join(canonical_json(e) + "\n" for e in entries))
    # When the archive is verified
    report = verify_archive(fake_redis, archive_dir)
    # Then the break is that line, as edited, after the 5 + 2 good records
    assert report.broken is not None and report.count == 7
    assert report.broken.record_id == f"{path}:3" and "edited" in report.broken.reason
    # while Redis alone (which no longer holds it) still verifies
    assert verify_redis(fake_redis).broken is None


def test_a_removed_archive_line_breaks_the_next_link(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    path = archive_dir / DAY_BEFORE
    kept = path.read_text().splitlines(keepends=True)
    path.write_text("".join(kept[:1] + kept[2:]))
    report = verify_archive(fake_redis, archive_dir)
    assert report.broken is not None and report.broken.record_id == f"{path}:2"
    assert "removed or inserted" in report.broken.reason


def test_an_unreadable_archive_line_is_named(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    path = archive_dir / DAY
    kept = path.read_text().splitlines(keepends=True)
    path.write_text("".join([kept[0], "not json\n", *kept[1:]]))
    report = verify_archive(fake_redis, archive_dir)
    assert report.broken is not None and report.broken.record_id == f"{path}:2"
    assert "unreadable" in report.broken.reason


def test_a_missing_archive_file_is_found(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    # Given the last day's file gone (and nothing left in Redis to link to)
    (archive_dir / DAY).unlink()
    # Then the archive ends before the head Redis knows of
    report = verify_archive(fake_redis, archive_dir)
    assert report.broken is not None and "a file is missing" in report.broken.reason
    # and the next run refuses to append to a directory that does not hold the head
    with pytest.raises(ArchiveMismatch, match="does not hold the archived head"):
        archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))


def test_another_directory_is_refused(fake_redis: fakeredis.FakeRedis, tmp_path: Path,
                                      two_days: list[str]) -> None:
    # Given records archived to one directory (say, on another host)
    archive_audit(fake_redis, tmp_path / "a", 0, seconds(MIDNIGHT))
    write_chain(fake_redis, 2, at_ms=MIDNIGHT + 20_000)
    # When a run is pointed at another one
    # Then it refuses rather than split the archive, and Redis keeps the records
    with pytest.raises(ArchiveMismatch):
        archive_audit(fake_redis, tmp_path / "b", 0, seconds(MIDNIGHT + 60_000))
    assert fake_redis.xlen(keys.AUDIT) == 7
    assert fake_redis.get(keys.AUDIT_ARCHIVE_LOCK) is None


def test_archiving_stops_before_a_record_that_does_not_verify(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    # Given the seventh record edited in Redis
    entries = stream(fake_redis)
    forged = {**json.loads(entries[6][1]["record"]), "step": "completed"}
    rewrite(fake_redis, [*entries[:6], (entries[6][0], {"record": canonical_json(forged)}),
                         *entries[7:]])
    # When everything is due
    report = archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    # Then the six before it are archived, and it stays in Redis, named
    assert report.archived == 6
    assert report.broken is not None and report.broken.record_id == entries[6][0]
    assert stream(fake_redis)[0][0] == entries[6][0]
    alone = verify_redis(fake_redis)
    assert alone.broken is not None and alone.broken.record_id == entries[6][0]


def test_a_record_put_below_the_archived_head_is_named_and_not_trimmed(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str]) -> None:
    archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 2_500))
    # Given a record slipped into Redis with an id before the archived head
    rewrite(fake_redis, [(f"{MIDNIGHT - 9_999}-0", {"record": "{}"}),
                         *stream(fake_redis)])
    # Then Redis-only verification names it, and archiving stops at it
    alone = verify_redis(fake_redis)
    assert alone.broken is not None and "archived head" in alone.broken.reason
    report = archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    assert report.archived == 0 and report.broken is not None
    assert fake_redis.xlen(keys.AUDIT) == 3 + 1


def test_a_second_archiver_waits_its_turn(fake_redis: fakeredis.FakeRedis,
                                          archive_dir: Path, two_days: list[str]) -> None:
    # Given the lock held by another run
    fake_redis.set(keys.AUDIT_ARCHIVE_LOCK, "someone-else", px=60_000)
    # Then this run does nothing
    with pytest.raises(ArchiveBusy):
        archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000))
    assert fake_redis.xlen(keys.AUDIT) == 10
    assert fake_redis.get(keys.AUDIT_ARCHIVE_LOCK) == "someone-else"
    # and once it is released, the next run goes ahead and releases it after itself
    fake_redis.delete(keys.AUDIT_ARCHIVE_LOCK)
    assert archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000)).archived == 10
    assert fake_redis.get(keys.AUDIT_ARCHIVE_LOCK) is None


def test_a_run_whose_lock_was_taken_over_stops_without_trimming(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the lock expiring and taken by another run while this one reads its first page
    real_xrange = fake_redis.xrange

    def xrange_then_lose_lock(*args: Any, **kwargs: Any) -> Any:
        page = real_xrange(*args, **kwargs)
        fake_redis.set(keys.AUDIT_ARCHIVE_LOCK, "another-run")
        return page

    monkeypatch.setattr(fake_redis, "xrange", xrange_then_lose_lock)
    # Then it stops before recording a head or trimming anything
    with pytest.raises(ArchiveBusy, match="lost the audit archive lock"):
        archive_audit(fake_redis, archive_dir, 0, seconds(MIDNIGHT + 60_000), page=4)
    monkeypatch.undo()
    assert fake_redis.xlen(keys.AUDIT) == 10 and archived_head(fake_redis) is None
    assert fake_redis.get(keys.AUDIT_ARCHIVE_LOCK) == "another-run"


def test_a_verification_racing_an_archive_run_walks_again(
        fake_redis: fakeredis.FakeRedis, archive_dir: Path, two_days: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an archive run that moves records just after verification read the head
    real = journal_verify.archived_head
    calls = {"n": 0}

    def head_then_archive(client: fakeredis.FakeRedis) -> journal_verify.ArchivedHead | None:
        head = real(client)
        calls["n"] += 1
        if calls["n"] == 1:
            monkeypatch.setattr(journal_verify, "archived_head", real)
            archive_audit(client, archive_dir, 0, seconds(MIDNIGHT + 2_500))
        return head

    monkeypatch.setattr(journal_verify, "archived_head", head_then_archive)
    # Then verification still passes (it walks again from the new head)
    report = verify_redis(fake_redis)
    assert report.broken is None and report.count == 3
    assert report.head is not None and report.head.seq == 7


# -- ledger TTL per phase ----------------------------------------------------------------

REF = "fe4291ca-d831-4760-96df-c9cb03b3cd95"
REQUEST = {"request_id": "r-1", "provider": "idpass", "action": "cancel", "reference": REF,
           "requested_by": "tests"}
LEDGER = keys.request_ledger("r-1")
TTL = 3600


class Provider:
    """ID Pass answering ``statuses`` in order, then 200; notes the ledger's TTL and
    phase while each call is in flight."""

    def __init__(self, client: fakeredis.FakeRedis, *statuses: int) -> None:
        self.client, self.statuses = client, list(statuses)
        self.seen: list[tuple[str, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(self.client.hget(LEDGER, "phase")),
                          int(self.client.ttl(LEDGER))))
        if self.statuses:
            return httpx.Response(self.statuses.pop(0), json={"error": "scripted"})
        return httpx.Response(200, json={"status": "cancelled", "fee_refunded": False})


@pytest.fixture
def pipeline_for(fake_redis: fakeredis.FakeRedis) -> Iterator[Any]:
    def build(*statuses: int) -> tuple[Pipeline, Provider]:
        settings = Settings(idpass_base_url="http://idpass.test", idpass_token="tok",
                            retry_max_attempts=3, retry_base_seconds=1, retry_cap_seconds=5,
                            ledger_ttl_seconds=TTL)
        provider = Provider(fake_redis, *statuses)
        adapter = IdPassAdapter(settings, transport=httpx.MockTransport(provider))
        journal = Journal(fake_redis, ledger_ttl=settings.ledger_ttl_seconds,
                          results_maxlen=settings.results_maxlen)
        return Pipeline(settings, journal, adapters=lambda *_: adapter), provider
    yield build


def test_only_a_finished_ledger_expires(fake_redis: fakeredis.FakeRedis,
                                        pipeline_for: Any) -> None:
    # Given a provider that fails once, then cancels
    pipeline, provider = pipeline_for(503)
    # When the request is delivered: the call fails and a retry is scheduled
    assert isinstance(pipeline.handle([REQUEST], {}, "t-1"), RetryLater)
    # Then the ledger was calling without a TTL during the call, and waits without one
    assert provider.seen == [("calling", -1)]
    assert read(fake_redis, LEDGER).phase == "waiting" and fake_redis.ttl(LEDGER) == -1
    # When the retry runs and the provider cancels
    fake_redis.hset(LEDGER, "not_before", "0")
    assert pipeline.handle([REQUEST], {}, "t-1") == Finished("cancelled")
    # Then it was still without a TTL in flight, and expires once done
    assert provider.seen[1] == ("calling", -1)
    assert read(fake_redis, LEDGER).phase == "done"
    assert 0 < fake_redis.ttl(LEDGER) <= TTL
    # and a duplicate does not extend it
    fake_redis.expire(LEDGER, 100)
    assert pipeline.handle([REQUEST], {}, "t-2") == Finished("cancelled")
    assert fake_redis.ttl(LEDGER) <= 100


def test_a_rejected_request_expires_too(fake_redis: fakeredis.FakeRedis,
                                        pipeline_for: Any) -> None:
    pipeline, _ = pipeline_for()
    bad = {**REQUEST, "action": "delete"}  # ID Pass has no delete
    assert pipeline.handle([bad], {}, "t-1") == Finished("rejected")
    assert 0 < fake_redis.ttl(LEDGER) <= TTL


def test_a_replayed_dead_letter_does_not_expire_in_flight(
        fake_redis: fakeredis.FakeRedis, pipeline_for: Any) -> None:
    """Regression: ledger TTL 0 must PERSIST (not only skip EXPIRE), or the done
    ledger's TTL runs on through the replay's waiting and calling."""
    # Given a request that ended unauthorized (dead-lettered; its done ledger expires)
    pipeline, _ = pipeline_for(401)
    assert pipeline.handle([REQUEST], {}, "t-1") == Finished("unauthorized")
    assert fake_redis.ttl(LEDGER) > 0

    class Sent:
        def submit(self, request: Any) -> str:
            return str(request["request_id"])

    # When it is replayed (ledger reset to waiting)
    deadletters.replay(fake_redis, Sent(), "r-1")
    # Then the ledger, in flight again, no longer expires
    assert read(fake_redis, LEDGER).phase == "waiting"
    assert fake_redis.ttl(LEDGER) == -1


def test_a_conflict_does_not_give_an_in_flight_ledger_a_ttl(
        fake_redis: fakeredis.FakeRedis, pipeline_for: Any) -> None:
    """Regression: a conflict never writes to an in-flight ledger (it is answered once
    the original has finished), so the ledger gets no TTL and its version stays put."""
    # Given a request waiting for its retry
    pipeline, _ = pipeline_for(503)
    assert isinstance(pipeline.handle([REQUEST], {}, "t-1"), RetryLater)
    version = read(fake_redis, LEDGER).version
    # When another request reuses its id / Then it waits for the original to finish
    other = {**REQUEST, "reference": "0f0f0f0f-0000-4000-8000-000000000000"}
    assert isinstance(pipeline.handle([other], {}, "t-2"), RetryLater)
    assert read(fake_redis, LEDGER).version == version
    # And the waiting ledger still does not expire
    assert read(fake_redis, LEDGER).phase == "waiting"
    assert fake_redis.ttl(LEDGER) == -1


def test_the_results_stream_is_capped(fake_redis: fakeredis.FakeRedis) -> None:
    # Given a journal with a small cap
    journal = Journal(fake_redis, results_maxlen=10)
    # When many requests finish
    for i in range(400):
        journal.apply(f"idvcancel:req:m{i}", 0, ledger={"phase": "done"}, event={"i": i})
    # Then the stream stays near the cap (MAXLEN ~ trims whole nodes of 100 entries)
    assert 10 <= fake_redis.xlen(keys.RESULTS) <= 10 + 100


# -- the intake index --------------------------------------------------------------------

NOW = 1_800_000_000.0


def index(client: fakeredis.FakeRedis, request_id: str, pushed: float, *,
          phase: str | None = None, with_json: bool = True) -> None:
    """An intake index entry (and, with ``phase``, its ledger)."""
    client.zadd(keys.INTAKE, {request_id: pushed})
    if with_json:
        client.hset(keys.INTAKE_REQUESTS, request_id, json.dumps({"request_id": request_id}))
    if phase is not None:
        client.hset(keys.request_ledger(request_id), mapping={"v": "1", "phase": phase})


def test_the_index_keeps_requests_in_flight_and_forgets_the_rest(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given, in the index: requests in flight (old and new), one just pushed, a copy of a
    # finished request, one pushed longer ago than a ledger lives that never got one, JSON
    # left without an entry, and an entry without JSON
    index(fake_redis, "calling", NOW - 10 * TTL, phase="calling")
    index(fake_redis, "waiting", NOW - 60, phase="waiting")
    index(fake_redis, "fresh", NOW - 60)
    index(fake_redis, "copy", NOW - 60, phase="done")
    index(fake_redis, "ancient", NOW - TTL - 1)
    fake_redis.hset(keys.INTAKE_REQUESTS, "orphan", "{}")
    index(fake_redis, "empty", NOW - 60, with_json=False)
    # When retention trims it (ledger TTL one hour)
    report = retention.trim_intake(fake_redis, TTL, NOW, page=2)
    # Then it forgot exactly the four that can no longer matter, and says why
    assert report.summary() == {"done": 1, "expired": 1, "orphans": 1, "empty": 1, "left": 3}
    assert sorted(fake_redis.zrange(keys.INTAKE, 0, -1)) == ["calling", "fresh", "waiting"]
    assert sorted(fake_redis.hkeys(keys.INTAKE_REQUESTS)) == ["calling", "fresh", "waiting"]
    # and a second run finds nothing more
    assert retention.trim_intake(fake_redis, TTL, NOW).summary()["left"] == 3


def test_with_ledgers_kept_forever_old_entries_stay(fake_redis: fakeredis.FakeRedis) -> None:
    # Given an entry pushed long ago that never got a ledger
    index(fake_redis, "old", NOW - 10**8)
    # When retention runs with a ledger TTL of 0 (keep forever)
    report = retention.trim_intake(fake_redis, 0, NOW)
    # Then it stays: it can still be pushed again safely
    assert report.expired == 0 and fake_redis.zcard(keys.INTAKE) == 1


def test_the_index_of_a_replayed_request_survives_retention(
        fake_redis: fakeredis.FakeRedis) -> None:
    # Given a dead letter being replayed: its ledger is reset (waiting) and it is pushed
    # again, so the entry is back in the index
    index(fake_redis, "r-1", NOW - 5, phase="done")
    fake_redis.hset(keys.request_ledger("r-1"), "phase", "waiting")
    # When retention runs
    retention.trim_intake(fake_redis, TTL, NOW)
    # Then the entry stays (the check and the removal are one step)
    assert fake_redis.zscore(keys.INTAKE, "r-1") == NOW - 5


def test_the_retention_task_trims_the_index_too(
        fake_redis: fakeredis.FakeRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.retention as task_module
    from worker.app import app

    # Given a copy of a finished request in the index
    index(fake_redis, "copy", time.time() - 60, phase="done")
    settings = Settings(audit_archive_dir=str(tmp_path))
    monkeypatch.setattr(task_module, "get_settings", lambda: settings)
    monkeypatch.setattr(task_module, "shared_client", lambda _settings: fake_redis)
    # When the task runs
    summary = app.tasks["idvcancel.retention"].apply().get()
    # Then the entry is gone, and the summary says so
    assert summary["intake"] == {"done": 1, "expired": 0, "orphans": 0, "empty": 0, "left": 0}
    assert fake_redis.zcard(keys.INTAKE) == 0


# -- settings and wiring -----------------------------------------------------------------


def test_retention_settings_have_their_defaults_and_env_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.ledger_ttl_seconds == 7 * 86400
    assert settings.results_maxlen == 1_000_000
    assert settings.audit_retention_seconds == 30 * 86400
    assert settings.audit_archive_dir == "./var/audit-archive"
    assert settings.retention_interval_seconds == 3600
    monkeypatch.setenv("IDVCANCEL_LEDGER_TTL_SECONDS", "86400")
    monkeypatch.setenv("IDVCANCEL_RESULTS_MAXLEN", "5000")
    monkeypatch.setenv("IDVCANCEL_AUDIT_RETENTION_SECONDS", "60")
    monkeypatch.setenv("IDVCANCEL_AUDIT_ARCHIVE_DIR", "/srv/audit")
    monkeypatch.setenv("IDVCANCEL_RETENTION_INTERVAL_SECONDS", "600")
    settings = Settings()
    assert (settings.ledger_ttl_seconds, settings.results_maxlen,
            settings.audit_retention_seconds, settings.audit_archive_dir,
            settings.retention_interval_seconds) == (86400, 5000, 60, "/srv/audit", 600)


@pytest.mark.parametrize("ttl", [1, 240])
def test_a_ledger_ttl_inside_the_redelivery_window_is_refused(ttl: int) -> None:
    with pytest.raises(ValidationError, match="IDVCANCEL_LEDGER_TTL_SECONDS"):
        Settings(ledger_ttl_seconds=ttl)  # visibility timeout 120 s
    assert Settings(ledger_ttl_seconds=0).ledger_ttl_seconds == 0  # 0: keep forever


def test_beat_enqueues_the_retention_task() -> None:
    schedule = celery_config(Settings(retention_interval_seconds=900))["beat_schedule"]
    entry = schedule["idvcancel-retention"]
    assert entry["task"] == "idvcancel.retention" and entry["schedule"] == 900
    assert entry["options"]["queue"] == "idvcancel"


def test_the_workers_journal_gets_the_retention_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.delivery import runtime as services

    settings = Settings(redis_url="redis://127.0.0.1:1/0", ledger_ttl_seconds=9000,
                        results_maxlen=77)
    monkeypatch.setattr(services, "get_settings", lambda: settings)
    monkeypatch.setattr(services, "_pipeline", None)
    journal = services.pipeline().journal
    assert (journal.ledger_ttl, journal.results_maxlen) == (9000, 77)


def test_the_worker_runs_the_retention_task(fake_redis: fakeredis.FakeRedis, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.retention as task_module
    from worker.app import app

    # Given the worker app, ten records due and a fresh archive directory
    assert "tasks.retention" in app.conf.include
    write_chain(fake_redis, 10, at_ms=MIDNIGHT)
    settings = Settings(audit_retention_seconds=0, audit_archive_dir=str(tmp_path))
    monkeypatch.setattr(task_module, "get_settings", lambda: settings)
    monkeypatch.setattr(task_module, "shared_client", lambda _settings: fake_redis)
    # When the task runs
    summary = app.tasks["idvcancel.retention"].apply().get()
    # Then it archived them and says so
    assert summary["ok"] is True and summary["archived"] == 10
    assert summary["files"] == [DAY] and summary["audit_length"] == 0
    # and a second run at once finds the lock free and nothing to do
    assert app.tasks["idvcancel.retention"].apply().get()["archived"] == 0
    # and one while another run holds the lock reports it as busy
    fake_redis.set(keys.AUDIT_ARCHIVE_LOCK, "x")
    busy = app.tasks["idvcancel.retention"].apply().get()
    assert busy["ok"] is False and busy["error"]["code"] == "busy"
