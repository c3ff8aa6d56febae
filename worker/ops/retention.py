"""Retention: what keeps Redis bounded while requests accumulate.

Four things grow with every request, and each has its bound:

- **Ledgers** (``idvcancel:req:<id>``): a finished ledger expires after
  ``IDVCANCEL_LEDGER_TTL_SECONDS`` (the journal's ``EXPIRE``; ledgers in flight carry
  none). A duplicate arriving after that is carried out again.
- **Result events** (``idvcancel:results``): ``XADD MAXLEN ~ IDVCANCEL_RESULTS_MAXLEN``.
- **The intake index** (``idvcancel:intake`` and ``idvcancel:intake:requests``, see
  ``worker.triggers.reconcile``): an entry leaves when its ledger becomes done (the journal's
  step). ``trim_intake`` forgets what can stay behind: copies pushed after the request
  ended, entries pushed longer ago than ``IDVCANCEL_LEDGER_TTL_SECONDS`` that never got
  a ledger (pushing them again could carry out a request whose ledger expired), request
  JSON without an index entry, and entries without JSON (``lua/intake_trim.lua``).
- **Audit records** (``idvcancel:audit``): this module. ``archive_audit`` moves records
  older than ``IDVCANCEL_AUDIT_RETENTION_SECONDS`` to append-only JSON Lines files, one
  per UTC day of the record's stream id (``audit-YYYY-MM-DD.jsonl``), one line per record::

      {"id":"1732377600000-0","record":{...the sealed record...}}

Archiving a page of records, in this order:

1. verify each record against the chain (its hash, its link to the last archived record,
   its ``seq``): a record that does not verify is never archived — the run stops before
   it, so a break stays visible to ``idvcancel audit verify``;
2. append the lines to the day files and ``fsync`` them (and the directory);
3. in one Lua call, only if this run still holds the lock and the archived head is still
   the one it started from: record the new archived head (``idvcancel:audit:archived``:
   ``id``, ``seq``, ``hash``) and ``XTRIM MINID`` exactly the records written.

A crash between 2 and 3 leaves records both in a file and in Redis; the next run writes
them again after them. Verification skips an id it has already seen (checking that the
copy is intact), so duplicates are harmless. A line cut short by a crash (no newline at
the end of a file) is cut off before the next append. Verifying Redis alone starts from
the archived head (``verify(records, start=head.hash)``); ``verify_archive`` walks the
files and then Redis as one chain, naming the first broken record as ``file:line`` or as
a stream id.

One archiver at a time: a Redis lock (``SET NX PX``, refreshed each page) across hosts, an
``flock`` on ``<dir>/.lock`` on one host. A directory that does not hold the archived head
(another host's local directory, a wrong path) is refused: every process that runs the
``idvcancel.retention`` task must see the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import redis

from worker import keys
from worker.contract import AUDIT_FIELD, canonical_json
from worker.journal.chain import GENESIS, BrokenLink, parse_head, verify
from worker.journal.verify import iter_records

#: Records read (and fsynced, and trimmed) per step of an archive run.
PAGE = 1000
#: How long the archive lock lives without a refresh (it is refreshed every page).
LOCK_TTL_MS = 60_000
FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"
#: How many times a verification is run again when an archive run moved records under it.
VERIFY_ATTEMPTS = 3

_INTAKE_TRIM_LUA = resources.files("worker").joinpath("lua/intake_trim.lua").read_text()
#: Index entries looked at per ``lua/intake_trim.lua`` call.
INTAKE_PAGE = 500

_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS: lock, archived head, audit stream. ARGV: token, expected head id ("" = none),
# new id, seq, hash, file, records added, MINID, at. Returns the number trimmed, -1 when
# the lock is no longer ours, -2 when the archived head moved.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local current = redis.call('HGET', KEYS[2], 'id') or ''
if current ~= ARGV[2] then
  return -2
end
redis.call('HSET', KEYS[2], 'id', ARGV[3], 'seq', ARGV[4], 'hash', ARGV[5],
           'file', ARGV[6], 'at', ARGV[9])
redis.call('HINCRBY', KEYS[2], 'records', ARGV[7])
return redis.call('XTRIM', KEYS[3], 'MINID', ARGV[8])
"""


class ArchiveError(Exception):
    """An archive run that could not (or must not) go ahead."""


class ArchiveBusy(ArchiveError):
    """Another archive run holds the lock (or took it over from this one)."""


class ArchiveMismatch(ArchiveError):
    """The archive directory does not hold the records Redis says were archived."""


# -- stream ids and the archived head ----------------------------------------------------


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair: ``"1732-5"`` → ``(1732, 5)``.

    Examples:
        >>> id_key("1732-5") < id_key("1732-10") < id_key("1733")
        True
    """
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest stream id greater than ``entry_id`` (``XTRIM MINID`` keeps it).

    Examples:
        >>> next_id("1732-5")
        '1732-6'
    """
    ms, seq = id_key(entry_id)
    return f"{ms + 1}-0" if seq >= 2**64 - 1 else f"{ms}-{seq + 1}"


def day_file(entry_id: str) -> str:
    """The archive file of a record: the UTC day its stream id was written.

    Examples:
        >>> day_file("1732406400000-0")
        'audit-2024-11-24.jsonl'
    """
    day = datetime.fromtimestamp(id_key(entry_id)[0] / 1000, UTC).strftime("%Y-%m-%d")
    return f"{FILE_PREFIX}{day}{FILE_SUFFIX}"


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


# -- the intake index ----------------------------------------------------------------------


@dataclass(frozen=True)
class IntakeReport:
    """What one ``trim_intake`` run forgot, by reason, and what is left."""

    done: int = 0
    expired: int = 0
    orphans: int = 0
    empty: int = 0
    left: int = 0

    def summary(self) -> dict[str, int]:
        return {"done": self.done, "expired": self.expired, "orphans": self.orphans,
                "empty": self.empty, "left": self.left}


def trim_intake(client: redis.Redis, ledger_ttl_seconds: int, now: float | None = None,
                *, page: int = INTAKE_PAGE) -> IntakeReport:
    """Forget the intake index entries that no longer matter (``lua/intake_trim.lua``).

    One pass over the index (``ZSCAN``), and over the request hash only when it holds
    more entries than the index (orphans), a page per script call. O(n) in the requests
    in flight, once per retention run.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        ledger_ttl_seconds: entries older than this with no ledger are forgotten (0:
            never, ledgers are kept forever).
        now: epoch seconds (default: the clock).
        page: entries per script call.
    """
    now = time.time() if now is None else now
    bound = f"{now - ledger_ttl_seconds:.3f}" if ledger_ttl_seconds > 0 else ""
    script = client.register_script(_INTAKE_TRIM_LUA)
    totals = [0, 0, 0, 0]

    def trim(ids: list[str]) -> None:
        if ids:
            reply = script(keys=[keys.INTAKE, keys.INTAKE_REQUESTS],
                           args=[keys.REQUEST_LEDGER_PREFIX, bound, *ids])
            for i, count in enumerate(reply):
                totals[i] += int(count)

    ids: list[str] = []
    for member, _score in client.zscan_iter(keys.INTAKE, count=page):
        ids.append(str(member))
        if len(ids) >= page:
            trim(ids)
            ids = []
    trim(ids)
    if int(client.hlen(keys.INTAKE_REQUESTS)) > int(client.zcard(keys.INTAKE)):
        ids = []
        for name, _json in client.hscan_iter(keys.INTAKE_REQUESTS, count=page):
            ids.append(str(name))
            if len(ids) >= page:
                trim(ids)
                ids = []
        trim(ids)
    done, expired, orphans, empty = totals
    return IntakeReport(done, expired, orphans, empty, left=int(client.zcard(keys.INTAKE)))


# -- walking a chain ---------------------------------------------------------------------


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


# -- archiving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveReport:
    """What one archive run did.

    ``broken`` is set when the run stopped before a record that does not verify (it
    stays in Redis, where ``idvcancel audit verify`` names it).
    """

    archived: int
    files: tuple[str, ...]
    head: ArchivedHead | None
    cut_id: str
    broken: BrokenLink | None = None
    repaired: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.broken is None,
            "archived": self.archived,
            "files": list(self.files),
            "head": None if self.head is None else {
                "id": self.head.entry_id, "seq": self.head.seq, "hash": self.head.hash,
                "file": self.head.file, "records": self.head.records},
            "cut_id": self.cut_id,
            "broken": None if self.broken is None else self.broken.describe(),
            "repaired": list(self.repaired),
        }


def archive_audit(
    client: redis.Redis,
    archive_dir: str | os.PathLike[str],
    older_than_seconds: float,
    now: float | None = None,
    *,
    page: int = PAGE,
    max_records: int | None = None,
) -> ArchiveReport:
    """Move audit records older than ``now - older_than_seconds`` to the archive files.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        archive_dir: where the day files are (created if missing).
        older_than_seconds: records whose stream id is older than this are moved.
        now: epoch seconds (default: the clock).
        page: records per fsync-and-trim step.
        max_records: stop after about this many (None: all that are due).

    Raises ``ArchiveBusy`` when another run holds the lock and ``ArchiveMismatch`` when
    the directory does not hold the records already archived.
    """
    now = time.time() if now is None else now
    cut_ms = int((now - older_than_seconds) * 1000)
    cut_id = f"{max(cut_ms - 1, 0)}"  # XRANGE max: every id of that millisecond and before
    directory = Path(archive_dir)
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    if not client.set(keys.AUDIT_ARCHIVE_LOCK, token, nx=True, px=LOCK_TTL_MS):
        raise ArchiveBusy("another audit archive run holds the lock "
                          f"({keys.AUDIT_ARCHIVE_LOCK}); try again when it is done")
    try:
        with _directory_lock(directory):
            return _archive(client, directory, token, cut_ms, cut_id, page, max_records)
    finally:
        client.register_script(_RELEASE_LOCK)(keys=[keys.AUDIT_ARCHIVE_LOCK], args=[token])


def _archive(client: redis.Redis, directory: Path, token: str, cut_ms: int, cut_id: str,
             page: int, max_records: int | None) -> ArchiveReport:
    head = archived_head(client)
    _check_directory_holds(directory, head)
    refresh = client.register_script(_REFRESH_LOCK)
    commit = client.register_script(_COMMIT)
    walker = _Walker(head)
    archived = 0
    files: dict[str, None] = {}  # in order of first write
    repaired: list[str] = []
    broken = _inserted_below(client, head)
    while cut_ms > 0 and broken is None and (max_records is None or archived < max_records):
        if not refresh(keys=[keys.AUDIT_ARCHIVE_LOCK], args=[token, LOCK_TTL_MS]):
            raise ArchiveBusy("lost the audit archive lock (it expired and another run took "
                              "it); this run stopped, nothing is lost")
        low = "(" + walker.last_id if walker.last_id else "-"
        entries: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            keys.AUDIT, min=low, max=cut_id, count=page)
        if not entries:
            break
        lines: dict[str, list[bytes]] = {}
        for entry_id, fields in entries:
            record = _parse(fields.get(AUDIT_FIELD))
            broken = walker.step(entry_id, entry_id, record)
            if broken is not None:
                break
            lines.setdefault(day_file(entry_id), []).append(_line(entry_id, record))
        if not lines:
            break
        for name, chunk in lines.items():
            if _append(directory / name, chunk):
                repaired.append(name)
            files[name] = None
        written = sum(len(chunk) for chunk in lines.values())
        last_file = list(lines)[-1]
        reply = commit(
            keys=[keys.AUDIT_ARCHIVE_LOCK, keys.AUDIT_ARCHIVED, keys.AUDIT],
            args=[token, head.entry_id if head else "", walker.last_id, walker.prev_seq or 0,
                  walker.prev_hash, last_file, written, next_id(walker.last_id),
                  f"{time.time():.3f}"])
        if int(reply) == -1:
            raise ArchiveBusy("lost the audit archive lock before trimming; the records "
                              "written stay in Redis too (verification skips the copies)")
        if int(reply) == -2:
            raise ArchiveBusy(f"{keys.AUDIT_ARCHIVED} moved under this run: another "
                              "archiver ran; the records written are copies it skips")
        archived += written
        head = archived_head(client)
        if len(entries) < page:
            break
    return ArchiveReport(archived, tuple(files), head, cut_id, broken, tuple(repaired))


def _inserted_below(client: redis.Redis, head: ArchivedHead | None) -> BrokenLink | None:
    """A record at or before the archived head cannot still be in Redis (the head and
    the trim are one step): one that is was put there. Stop rather than trim it away."""
    if head is None:
        return None
    first: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
        keys.AUDIT, min="-", max=head.entry_id, count=1)
    if not first:
        return None
    return _below_head(first[0][0], _parse(first[0][1].get(AUDIT_FIELD)), head, 0)


def _below_head(entry_id: str, record: Mapping[str, Any], head: ArchivedHead, position: int
                ) -> BrokenLink:
    seq = record.get("seq")
    return BrokenLink(position, entry_id, seq if isinstance(seq, int) else None,
                      f"it is at or before the archived head ({head.describe()}) but still "
                      "in Redis (inserted)")


def _parse(raw: str | None) -> dict[str, Any]:
    try:
        record = json.loads(raw or "")
    except ValueError:
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def _line(entry_id: str, record: Mapping[str, Any]) -> bytes:
    return (canonical_json({"id": entry_id, "record": record}) + "\n").encode()


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<dir>/.lock``: one archiver per directory on a host,
    even if the Redis lock expired under a stalled run."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ArchiveBusy(f"another audit archive run is writing to {directory}") from exc
        yield
    finally:
        os.close(fd)  # releases the flock


def _append(path: Path, lines: list[bytes]) -> bool:
    """Append ``lines`` to ``path`` and make them durable; True when a line cut short by a
    crash had to be cut off first."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        repaired = _cut_torn_tail(fd)
        data = memoryview(b"".join(lines))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_directory(path.parent)
    return repaired


def _cut_torn_tail(fd: int) -> bool:
    """A file must end with a newline; a partial last line was never committed (the
    head and the trim come after the fsync): cut it off."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return False
    end = _last_newline_end(fd, size)
    os.ftruncate(fd, end)
    os.fsync(fd)
    return True


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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# -- verifying ---------------------------------------------------------------------------


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
