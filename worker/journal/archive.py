"""The audit archive: records older than ``IDVCANCEL_AUDIT_RETENTION_SECONDS`` move from
Redis to append-only files, without ever breaking the chain.

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
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from worker import keys, scripts
from worker.contract import AUDIT_FIELD, canonical_json
from worker.errors import ArchiveBusy, ArchiveError, ArchiveMismatch
from worker.journal.chain import BrokenLink
from worker.journal.verify import (
    FILE_PREFIX,
    FILE_SUFFIX,
    PAGE,
    ArchivedHead,
    _below_head,
    _check_directory_holds,
    _last_newline_end,
    _parse,
    _Walker,
    archived_head,
    id_key,
)

__all__ = ["ArchiveBusy", "ArchiveError", "ArchiveMismatch", "ArchiveReport", "archive_audit"]


#: How long the archive lock lives without a refresh (it is refreshed every page).
LOCK_TTL_MS = 60_000








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


def _commit_script(client: redis.Redis) -> Any:
    """``lua/archive_commit.lua`` for ``client`` (a seam: the crash tests replace it)."""
    return scripts.script(client, "archive_commit")


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
        scripts.script(client, "archive_lock_release")(keys=[keys.AUDIT_ARCHIVE_LOCK], args=[token])


def _archive(client: redis.Redis, directory: Path, token: str, cut_ms: int, cut_id: str,
             page: int, max_records: int | None) -> ArchiveReport:
    head = archived_head(client)
    _check_directory_holds(directory, head)
    refresh = scripts.script(client, "archive_lock_refresh")
    commit = _commit_script(client)
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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
