"""Reading the audit chain back and verifying it: from Redis (``iter_records``), from
the archive files and Redis as one chain (``verify_archive``), naming the first record that
was edited, removed or inserted.

The archive's layout is read here too (day files of JSON Lines, ``{"id": <stream id>,
"record": {...}}`` a line, and the archived head in ``idvcancel:audit:archived``), since
verifying needs it; ``worker.journal.archive`` writes it. Verifying Redis alone starts from
the archived head (``verify(records, start=head.hash)``); a copy of an id already walked
(an archive run interrupted between its fsync and its trim) is checked and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from worker import keys
from worker.contract import AUDIT_FIELD
from worker.errors import ArchiveError, ArchiveMismatch
from worker.journal.chain import GENESIS, BrokenLink, parse_head, verify

#: Records read (and fsynced, and trimmed) per step of an archive run.
PAGE = 1000


FILE_PREFIX = "audit-"


FILE_SUFFIX = ".jsonl"


#: How many times a verification is run again when an archive run moved records under it.
VERIFY_ATTEMPTS = 3


def iter_records(
    client: redis.Redis, stream: str = keys.AUDIT
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(entry id, record)`` for every audit record, oldest first."""
    start = "-"
    while True:
        page: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            stream, min=start, max="+", count=PAGE
        )
        for entry_id, fields in page:
            try:
                record = json.loads(fields.get(AUDIT_FIELD, ""))
            except ValueError:
                record = {"unreadable": True}
            yield entry_id, record if isinstance(record, dict) else {"unreadable": True}
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0]


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair: ``"1732-5"`` → ``(1732, 5)``.

    Examples:
        >>> id_key("1732-5") < id_key("1732-10") < id_key("1733")
        True
    """
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class ArchivedHead:
    """The last record moved out of Redis: the chain left in Redis continues from it."""

    entry_id: str
    seq: int
    hash: str
    file: str = ""
    records: int = 0  # archived so far, all runs together

    def describe(self) -> str:
        return f"seq {self.seq}, id {self.entry_id}"


def archived_head(client: redis.Redis) -> ArchivedHead | None:
    """What ``idvcancel:audit:archived`` says (None: nothing archived yet)."""
    raw: dict[str, str] = client.hgetall(keys.AUDIT_ARCHIVED)  # type: ignore[assignment]
    if not raw:
        return None
    try:
        head = ArchivedHead(raw["id"], int(raw["seq"]), raw["hash"], raw.get("file", ""),
                            int(raw.get("records") or 0))
        id_key(head.entry_id)
    except (KeyError, ValueError) as exc:
        raise ArchiveError(f"{keys.AUDIT_ARCHIVED} is unreadable ({raw!r})") from exc
    return head


class _Walker:
    """Checks records one after the other against the chain, skipping copies of ids
    already walked (an archive run interrupted between its fsync and its trim)."""

    def __init__(self, head: ArchivedHead | None = None) -> None:
        self.prev_hash = head.hash if head else GENESIS
        self.prev_seq: int | None = head.seq if head else 0
        self.last: tuple[int, int] | None = id_key(head.entry_id) if head else None
        self.last_id = head.entry_id if head else ""
        self.count = 0
        self.duplicates = 0

    def step(self, entry_id: str, label: str, record: Mapping[str, Any]) -> BrokenLink | None:
        """Walk one record; ``label`` names it in a break (``file:line`` or the id)."""
        try:
            key = id_key(entry_id)
        except ValueError:
            return self._broken(label, record, f"its stream id {entry_id!r} is not valid")
        if self.last is not None and key <= self.last:
            # Already walked: a copy left by an interrupted run. It must be intact itself.
            _, broken = verify([(label, record)], start=str(record.get("prev_hash")))
            if broken is not None:
                return self._broken(label, record, broken.reason)
            self.duplicates += 1
            return None
        _, broken = verify([(label, record)], start=self.prev_hash)
        if broken is not None:
            return self._broken(label, record, broken.reason)
        seq = record.get("seq")
        if self.prev_seq is not None and seq != self.prev_seq + 1:
            return self._broken(label, record, f"sequence jumps from {self.prev_seq} to {seq} "
                                               "(removed or inserted)")
        self.prev_hash = str(record["hash"])
        self.prev_seq = seq if isinstance(seq, int) else None
        self.last, self.last_id = key, entry_id
        self.count += 1
        return None

    def _broken(self, label: str, record: Mapping[str, Any], reason: str) -> BrokenLink:
        seq = record.get("seq")
        return BrokenLink(self.count, label, seq if isinstance(seq, int) else None, reason)


def _parse(raw: str | None) -> dict[str, Any]:
    try:
        record = json.loads(raw or "")
    except ValueError:
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def archive_files(directory: Path) -> list[Path]:
    """The day files of ``directory``, oldest first."""
    return sorted(p for p in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p.is_file())


def _check_directory_holds(directory: Path, head: ArchivedHead | None) -> None:
    if head is None:
        return
    files = archive_files(directory)
    last = _last_id(files[-1]) if files else None
    if last is None or id_key(last) < id_key(head.entry_id):
        raise ArchiveMismatch(
            f"{directory} does not hold the archived head ({head.describe()}, file "
            f"{head.file}): the archive directory must be the one earlier runs wrote to, "
            "shared by every process that archives")


def _last_id(path: Path) -> str | None:
    """The id on the last complete line of ``path`` (None if none can be read)."""
    with path.open("rb") as file:
        end = _last_newline_end(file.fileno(), os.fstat(file.fileno()).st_size)
        if end == 0:
            return None
        start = _last_newline_end(file.fileno(), end - 1)
        file.seek(start)
        line = file.read(end - start)
    entry = _parse_line(line)
    return None if entry is None else entry[0]


@dataclass(frozen=True)
class ChainReport:
    """A verification: records walked in the archive and in Redis, and the first break."""

    in_archive: int
    in_redis: int
    head: ArchivedHead | None
    broken: BrokenLink | None
    duplicates: int = 0

    @property
    def count(self) -> int:
        return self.in_archive + self.in_redis


def _parse_line(line: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(
            entry.get("record"), dict):
        return None
    return entry["id"], entry["record"]


def _below_head(entry_id: str, record: Mapping[str, Any], head: ArchivedHead, position: int
                ) -> BrokenLink:
    seq = record.get("seq")
    return BrokenLink(position, entry_id, seq if isinstance(seq, int) else None,
                      f"it is at or before the archived head ({head.describe()}) but still "
                      "in Redis (inserted)")


def _walk_redis(client: redis.Redis, walker: _Walker, floor: ArchivedHead | None
                ) -> BrokenLink | None:
    """Walk the stream; an id at or below ``floor`` (the archived head) cannot still be
    in Redis, since the head and the trim are one step."""
    for entry_id, record in iter_records(client):
        if floor is not None and id_key(entry_id) <= id_key(floor.entry_id):
            return _below_head(entry_id, record, floor, walker.count)
        broken = walker.step(entry_id, entry_id, record)
        if broken is not None:
            return broken
    return None


def _tail_break(client: redis.Redis, walker: _Walker) -> BrokenLink | None:
    """The walk must end where the chain head (written with every append) says it ends:
    otherwise records were cut off the end. A head ahead of the walk with records after
    the last one walked is only a concurrent append, not a break."""
    raw = client.get(keys.AUDIT_HEAD)
    if not raw:
        return None
    seq, digest = parse_head(str(raw))
    if seq == walker.prev_seq and digest == walker.prev_hash:
        return None
    if walker.prev_seq is not None and seq > walker.prev_seq and walker.last_id and client.xrange(
            keys.AUDIT, min="(" + walker.last_id, max="+", count=1):
        return None  # appended while we walked
    label = walker.last_id or "(start)"
    return BrokenLink(walker.count, label, walker.prev_seq,
                      f"the chain ends at seq {walker.prev_seq} but its head says {seq}:"
                      " records were cut off the end (or the head was rewritten)")


def verify_redis(client: redis.Redis) -> ChainReport:
    """Verify the chain held in Redis, continuing from the archived head if there is one."""
    report = ChainReport(0, 0, None, None)
    for _ in range(VERIFY_ATTEMPTS):
        head = archived_head(client)
        walker = _Walker(head)
        broken = _walk_redis(client, walker, head) or _tail_break(client, walker)
        report = ChainReport(0, walker.count, head, broken)
        if broken is None or archived_head(client) == head:
            return report
        # an archive run moved records while we walked: walk again from its new head
    return report


def verify_archive(client: redis.Redis, archive_dir: str | os.PathLike[str]) -> ChainReport:
    """Verify the archive files and then Redis as one chain from the first record."""
    report = ChainReport(0, 0, None, None)
    for _ in range(VERIFY_ATTEMPTS):
        head = archived_head(client)
        report = _verify_archive_once(client, Path(archive_dir), head)
        if report.broken is None or archived_head(client) == head:
            return report
    return report


def _verify_archive_once(client: redis.Redis, directory: Path, head: ArchivedHead | None
                         ) -> ChainReport:
    walker = _Walker()
    for path in archive_files(directory):
        broken = _walk_file(path, walker)
        if broken is not None:
            return ChainReport(walker.count, 0, head, broken, walker.duplicates)
    in_archive = walker.count
    if head is not None and (walker.last is None or walker.last < id_key(head.entry_id)):
        ends = f"id {walker.last_id}" if walker.last_id else "nothing"
        return ChainReport(in_archive, 0, head, BrokenLink(
            walker.count, str(directory), None,
            f"the archive ends at {ends} but Redis says records up to {head.describe()} "
            f"({head.file}) were archived: a file is missing or was cut short (removed)"),
            walker.duplicates)
    broken = _walk_redis(client, walker, head) or _tail_break(client, walker)
    return ChainReport(in_archive, walker.count - in_archive, head, broken, walker.duplicates)


def _walk_file(path: Path, walker: _Walker) -> BrokenLink | None:
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            label = f"{path}:{number}"
            if not line.endswith(b"\n"):
                break  # cut short by a crash: never committed; the next run cuts it off
            entry = _parse_line(line)
            if entry is None:
                return BrokenLink(walker.count, label, None,
                                  'unreadable line (not {"id": ..., "record": {...}})')
            broken = walker.step(entry[0], label, entry[1])
            if broken is not None:
                return broken
    return None


def verify_stream(client: redis.Redis) -> tuple[int, BrokenLink | None]:
    """Verify the chain held in Redis: from the archived head when records have been
    archived (``worker.ops.retention``), to the chain head (records cut off the end count)."""
    report = verify_redis(client)
    return report.in_redis, report.broken


def _last_newline_end(fd: int, size: int, chunk: int = 65536) -> int:
    """The offset just after the last newline before ``size`` (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        block = os.pread(fd, pos - start, start)
        found = block.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0
