"""Signed checkpoints of the audit chain: proof that holds against whoever can write Redis.

The chain alone (``worker.journal.chain``) shows an edited record only to a verifier who knows
the forger did not re-seal every later record and the head; anyone who can write Redis
can. So, as AWS CloudTrail's signed digest files and certificate-transparency logs do
(RFC 9162), a checkpoint is signed every so often with an Ed25519 key the chain's writers
do not hold (``IDVCANCEL_AUDIT_SIGNING_KEY``, on the process that signs), covering the
records since the previous checkpoint:

    {"origin": <deployment>, "first_seq": a, "seq": b, "head": <hash of record b>,
     "merkle_root": <hex RFC 9162 tree hash over the raw hashes of records a..b>,
     "prev_checkpoint": <hex SHA-256 of the previous checkpoint's JCS>, "at": <ISO 8601>,
     "key_id": <first 16 hex of SHA-256(raw public key)>,
     "signature": <base64 Ed25519 over the JCS of all the other fields>}

A re-sealed chain no longer matches the Merkle roots the key signed, and the key is not
in Redis, so the forger cannot sign new ones. Checkpoints chain too (``prev_checkpoint``),
so one removed from between two others shows. They go to the stream
``idvcancel:checkpoints`` (compared-and-set by ``lua/checkpoint.lua``) and to
``checkpoints.jsonl`` in the audit archive directory; ``verify`` checks that both copies
agree, every signature and link, and that the chain (archive files and Redis) matches
every checkpoint. The exact formats: ``docs/audit.md``.

Errors, as a tree::

    CheckpointError
    ├── SigningKeyError       the key file is missing, unreadable, or not an Ed25519 key
    └── ArchiveIncomplete     records to cover were archived, but the archive directory
                              given does not hold them
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import redis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from worker import keys
from worker.contract import AUDIT_FIELD
from worker.journal import chain as audit
from worker.journal import merkle
from worker.journal.archive import day_file
from worker.journal.verify import archive_files, archived_head, id_key

_LUA = resources.files("worker").joinpath("lua/checkpoint.lua").read_text()
#: The field of ``idvcancel:checkpoints`` entries.
CHECKPOINT_FIELD = "checkpoint"
#: The checkpoints' copy in the audit archive directory.
CHECKPOINT_FILE = "checkpoints.jsonl"
#: Every field of a checkpoint, and nothing else.
FIELDS = ("origin", "first_seq", "seq", "head", "merkle_root", "prev_checkpoint", "at",
          "key_id", "signature")
#: Times a verification is tried again when an archive run moved records under it.
ATTEMPTS = 3


class CheckpointError(Exception):
    """A checkpoint could not be written or read."""


class SigningKeyError(CheckpointError):
    """The signing (or public) key cannot be used."""


class ArchiveIncomplete(CheckpointError):
    """Records were archived, but the directory given does not hold them."""


# -- keys and signatures ----------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo), as ``idvcancel audit public-key``
    prints it and Node's ``crypto.createPublicKey`` reads it."""
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class Signer:
    """The private key that signs checkpoints."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private_key.sign(data)).decode("ascii")


def load_signer(path: str, password: str = "") -> Signer:
    """The Ed25519 private key in the PEM file at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path!r}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password.encode() or None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path!r} is not a readable PEM private key"
                              " (wrong password, or not PEM)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path!r} holds a {type(key).__name__.removeprefix('_')}, "
                              "not an Ed25519 private key")
    return Signer(key)


def load_public_key(path: str) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path`` (a private key is refused:
    a verifier should never need one)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the public key {path!r}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningKeyError(f"{path!r} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path!r} is not an Ed25519 public key")
    return key


def digest(checkpoint: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the checkpoint's JCS, signature included: what the next one names."""
    return hashlib.sha256(audit.jcs(dict(checkpoint))).hexdigest()


def signed_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """The JCS of every field but ``signature``: what the signature is over."""
    return audit.jcs({k: v for k, v in checkpoint.items() if k != "signature"})


def problem(checkpoint: Mapping[str, Any], public_key: Ed25519PublicKey) -> str | None:
    """Why ``checkpoint`` is not a well-formed checkpoint signed by ``public_key``
    (None: it is). Its place among the others is checked by the caller."""
    if not isinstance(checkpoint, Mapping) or sorted(checkpoint) != sorted(FIELDS):
        return f"it does not have exactly the fields {', '.join(FIELDS)}"
    ints = (checkpoint["first_seq"], checkpoint["seq"])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
        return "first_seq and seq must be integers"
    if not 1 <= checkpoint["first_seq"] <= checkpoint["seq"]:
        return f"it covers no records (first_seq {checkpoint['first_seq']}, seq " \
               f"{checkpoint['seq']})"
    if not all(isinstance(checkpoint[k], str) for k in FIELDS if k not in ("first_seq", "seq")):
        return "its text fields must be strings"
    expected = key_id(public_key)
    if checkpoint["key_id"] != expected:
        return (f"it names key {checkpoint['key_id']!r}, not the key given ({expected}): "
                "signed by another key")
    try:
        signature = base64.b64decode(checkpoint["signature"], validate=True)
        public_key.verify(signature, signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        return "its signature does not verify with the key given (forged or altered)"
    return None


# -- the chain, archive files then Redis ----------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One record as walked: its stream id, where it was read (``FILE:LINE`` or the id)."""

    entry_id: str
    label: str
    record: Mapping[str, Any]


def _parse(raw: str | bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "")
    except ValueError:
        return {"unreadable": True}
    return value if isinstance(value, dict) else {"unreadable": True}


def iter_chain(client: redis.Redis, archive_dir: str | os.PathLike[str] | None,
               after_id: str = "") -> Iterator[Entry]:
    """The chain's records after stream id ``after_id`` ("" = from the first), in order:
    from the archive files while they are needed, then from Redis.

    Copies left in a file by an interrupted archive run (ids already walked) are skipped;
    an unreadable line is yielded as ``{"unreadable": true}`` for the caller's checks to
    name. Raises ``ArchiveIncomplete`` when records after ``after_id`` were archived but
    ``archive_dir`` is not given or does not exist.
    """
    head = archived_head(client)
    last = id_key(after_id) if after_id else None
    if head is not None and (last is None or last < id_key(head.entry_id)):
        directory = Path(archive_dir) if archive_dir else None
        if directory is None or not directory.is_dir():
            raise ArchiveIncomplete(
                f"records up to {head.describe()} were moved to the audit archive, and "
                f"the archive directory ({archive_dir or 'none given'}) is not there: "
                "give it (--archive DIR or IDVCANCEL_AUDIT_ARCHIVE_DIR)")
        first_file = day_file(after_id) if after_id else ""
        for path in archive_files(directory):
            if path.name < first_file:
                continue  # a day before the start: only earlier ids
            for entry in _file_entries(path):
                key = id_key(entry.entry_id) if entry.entry_id else None
                if key is not None and last is not None and key <= last:
                    continue
                if key is not None:
                    last = key
                yield entry
        if last is None or last < id_key(head.entry_id):
            last = id_key(head.entry_id)  # the files end early: Redis from the head on
    start = "-" if last is None else f"({last[0]}-{last[1]}"
    while True:
        page: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            keys.AUDIT, min=start, max="+", count=1000)
        for entry_id, fields in page:
            yield Entry(entry_id, entry_id, _parse(fields.get(AUDIT_FIELD)))
        if len(page) < 1000:
            return
        start = "(" + page[-1][0]


def _file_entries(path: Path) -> Iterator[Entry]:
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith(b"\n"):
                return  # cut short by a crash: never committed
            entry = _parse(line)
            entry_id, record = entry.get("id"), entry.get("record")
            try:
                id_key(str(entry_id))
            except ValueError:
                entry_id = ""
            if not isinstance(record, dict):
                record = {"unreadable": True}
            yield Entry(str(entry_id or ""), f"{path}:{number}", record)


class _Links:
    """Checks records one after the other: own hash, link, ``seq``."""

    def __init__(self, prev_hash: str = audit.GENESIS, prev_seq: int = 0) -> None:
        self.prev_hash, self.prev_seq = prev_hash, prev_seq

    def step(self, entry: Entry) -> str | None:
        _, broken = audit.verify([(entry.label, entry.record)], start=self.prev_hash)
        if broken is not None:
            return broken.reason
        seq = entry.record.get("seq")
        if seq != self.prev_seq + 1:
            return f"sequence jumps from {self.prev_seq} to {seq} (removed or inserted)"
        self.prev_hash, self.prev_seq = str(entry.record["hash"]), int(seq)
        return None


# -- writing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointHead:
    """What ``idvcancel:checkpoints:head`` says of the last checkpoint."""

    seq: int
    digest: str
    hash: str  # the hash of record ``seq``
    record_id: str  # its stream id
    at: float


def read_head(client: redis.Redis) -> CheckpointHead | None:
    raw: dict[str, str] = client.hgetall(keys.CHECKPOINTS_HEAD)  # type: ignore[assignment]
    if not raw:
        return None
    try:
        return CheckpointHead(int(raw["seq"]), raw["digest"], raw["hash"], raw["record_id"],
                              float(raw["at"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{keys.CHECKPOINTS_HEAD} is unreadable ({raw!r})") from exc


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True)
class CheckpointRun:
    """What one ``write_checkpoints`` run did."""

    written: tuple[dict[str, Any], ...] = ()
    uncovered: int = 0  # records left after the last checkpoint
    broken: str | None = None  # a record that does not verify: nothing signed past it
    moved: bool = False  # another run appended first; this one stopped
    file_appended: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.broken is None,
            "written": len(self.written),
            "checkpoints": [{"first_seq": c["first_seq"], "seq": c["seq"],
                             "merkle_root": c["merkle_root"]} for c in self.written],
            "uncovered": self.uncovered,
            "broken": self.broken,
            "moved": self.moved,
            "file_appended": self.file_appended,
        }


@dataclass
class _Pending:
    leaves: list[bytes] = field(default_factory=list)
    first_seq: int = 0
    last: Entry | None = None


def write_checkpoints(client: redis.Redis, signer: Signer, *, origin: str,
                      archive_dir: str | os.PathLike[str] | None, max_records: int,
                      interval_seconds: float | None = None, now: float | None = None
                      ) -> CheckpointRun:
    """Sign and append checkpoints covering the records since the last one.

    Parameters:
        client: a Redis client (``decode_responses=True``).
        signer: the private key.
        origin: the deployment's name, written into every checkpoint.
        archive_dir: the audit archive directory: where ``checkpoints.jsonl`` goes, and
            where records already archived are read (None: Redis only, no file).
        max_records: the most records one checkpoint covers; as many records as that
            waiting make a checkpoint at once.
        interval_seconds: fewer records than ``max_records`` are covered only once this
            long has passed since the last checkpoint. None: cover everything now (the
            CLI).
        now: epoch seconds (default: the clock).

    Every record is checked against the chain before it is covered: a record that does
    not verify is never signed (the run stops before it and says so in ``broken``).
    """
    now = time.time() if now is None else now
    run = CheckpointRun()
    for _ in range(ATTEMPTS):
        archived = archived_head(client)
        run = _write(client, signer, origin, archive_dir, max_records, interval_seconds, now)
        if run.broken is None or archived_head(client) == archived:
            break
        # an archive run moved records while we read them: read again from its new head
    appended = sync_file(client, archive_dir) if archive_dir is not None else 0
    return CheckpointRun(run.written, run.uncovered, run.broken, run.moved, appended)


def _write(client: redis.Redis, signer: Signer, origin: str,
           archive_dir: str | os.PathLike[str] | None, max_records: int,
           interval_seconds: float | None, now: float) -> CheckpointRun:
    head = read_head(client)
    chain_seq, _ = audit.parse_head(str(client.get(keys.AUDIT_HEAD) or ""))
    covered = head.seq if head else 0
    uncovered = max(0, chain_seq - covered)
    due = (interval_seconds is None or head is None
           or now - head.at >= interval_seconds)
    if uncovered == 0 or (uncovered < max_records and not due):
        return CheckpointRun(uncovered=uncovered)
    script = client.register_script(_LUA)
    links = _Links(head.hash, head.seq) if head else _Links()
    prev = head.digest if head else ""
    pending = _Pending()
    written: list[dict[str, Any]] = []
    broken: str | None = None
    for entry in iter_chain(client, archive_dir, head.record_id if head else ""):
        reason = links.step(entry)
        if reason is not None:
            broken = f"record {entry.label} (seq {entry.record.get('seq')}): {reason}"
            break
        if not pending.leaves:
            pending.first_seq = links.prev_seq
        pending.leaves.append(bytes.fromhex(str(entry.record["hash"])))
        pending.last = entry
        if len(pending.leaves) >= max_records:
            made = _commit(script, signer, origin, prev, pending, now)
            if made is None:
                return CheckpointRun(tuple(written), uncovered, None, moved=True)
            written.append(made)
            prev = digest(made)
            pending = _Pending()
    if pending.leaves and due:
        made = _commit(script, signer, origin, prev, pending, now)
        if made is None:
            return CheckpointRun(tuple(written), uncovered, broken, moved=True)
        written.append(made)
    left = max(0, chain_seq - (int(written[-1]["seq"]) if written else covered))
    return CheckpointRun(tuple(written), left, broken)


def _commit(script: Any, signer: Signer, origin: str, prev: str, pending: _Pending,
            now: float) -> dict[str, Any] | None:
    """Sign ``pending`` into a checkpoint after ``prev`` and append it (None: another
    checkpoint was appended after ``prev`` first)."""
    assert pending.last is not None
    body: dict[str, Any] = {
        "origin": origin,
        "first_seq": pending.first_seq,
        "seq": int(pending.last.record["seq"]),
        "head": str(pending.last.record["hash"]),
        "merkle_root": merkle.tree_hash(pending.leaves).hex(),
        "prev_checkpoint": prev or audit.GENESIS,
        "at": _iso(now),
        "key_id": signer.key_id,
    }
    checkpoint = {**body, "signature": signer.sign(audit.jcs(body))}
    reply = script(keys=[keys.CHECKPOINTS, keys.CHECKPOINTS_HEAD], args=[
        prev, json.dumps(checkpoint, sort_keys=True, separators=(",", ":")),
        digest(checkpoint), checkpoint["seq"], checkpoint["head"], pending.last.entry_id,
        f"{now:.3f}"])
    return checkpoint if int(reply[0]) == 1 else None


# -- reading, and the archive file -----------------------------------------------------


def read_checkpoints(client: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    """``(stream id, checkpoint)`` for every checkpoint in ``idvcancel:checkpoints``,
    oldest first (an unreadable entry reads ``{"unreadable": true}``)."""
    found: list[tuple[str, dict[str, Any]]] = []
    start = "-"
    while True:
        page: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            keys.CHECKPOINTS, min=start, max="+", count=1000)
        found += [(entry_id, _parse(fields.get(CHECKPOINT_FIELD))) for entry_id, fields in page]
        if len(page) < 1000:
            return found
        start = "(" + page[-1][0]


def read_file(archive_dir: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(FILE:LINE, checkpoint)`` for every complete line of ``checkpoints.jsonl``."""
    path = Path(archive_dir) / CHECKPOINT_FILE
    if not path.exists():
        return []
    with path.open("rb") as file:
        return [(f"{path}:{n}", _parse(line)) for n, line in enumerate(file, start=1)
                if line.endswith(b"\n")]


@contextlib.contextmanager
def _file_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".checkpoints.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sync_file(client: redis.Redis, archive_dir: str | os.PathLike[str]) -> int:
    """Append to ``checkpoints.jsonl`` the checkpoints of the stream it does not hold
    yet, fsynced; returns how many. Redis is written first (its compare-and-set keeps
    the checkpoints one chain) and the file follows it, so a crash in between only
    leaves the file behind until the next run."""
    directory = Path(archive_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    with _file_lock(directory):
        held = read_file(directory)
        last_seq = max((int(c.get("seq") or 0) for _, c in held
                        if isinstance(c.get("seq"), int)), default=0)
        missing = [c for _, c in read_checkpoints(client)
                   if isinstance(c.get("seq"), int) and c["seq"] > last_seq]
        if not missing:
            return 0
        data = b"".join(audit.jcs(c) + b"\n" for c in missing)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut short by a crash
                content = os.pread(fd, size, 0)
                os.ftruncate(fd, content.rfind(b"\n") + 1)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return len(missing)


# -- verifying --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointReport:
    """A verification of the checkpoints and of the chain against them."""

    checkpoints: int
    covered: int  # records covered by a verified checkpoint
    pending: int  # records after the last checkpoint (covered by none yet)
    broken: str | None  # the first record or checkpoint that does not verify
    key: str = ""
    in_file: int = 0


@dataclass
class _Numbered:
    number: int
    label: str
    checkpoint: dict[str, Any]

    def describe(self) -> str:
        first, seq = self.checkpoint.get("first_seq"), self.checkpoint.get("seq")
        return f"checkpoint #{self.number} (records {first}..{seq}, {self.label})"


def verify(client: redis.Redis, public_key: Ed25519PublicKey,
           archive_dir: str | os.PathLike[str] | None) -> CheckpointReport:
    """Verify every checkpoint (signature, key, chain of checkpoints, both copies
    agreeing) and the chain of records against them; name the first that fails."""
    report = CheckpointReport(0, 0, 0, None)
    for _ in range(ATTEMPTS):
        archived = archived_head(client)
        report = _verify_once(client, public_key, archive_dir)
        if report.broken is None or archived_head(client) == archived:
            return report
    return report


def _agreed(client: redis.Redis, archive_dir: str | os.PathLike[str] | None
            ) -> tuple[list[_Numbered], int, str | None]:
    """The checkpoints, after checking the stream and the file hold the same ones."""
    stream = read_checkpoints(client)
    held = read_file(archive_dir) if archive_dir is not None else []
    for n, ((entry_id, ours), (line, theirs)) in enumerate(zip(stream, held, strict=False), 1):
        if ours != theirs:
            return [], len(held), (
                f"checkpoint #{n} differs between {keys.CHECKPOINTS} (entry {entry_id}) "
                f"and {line}: one of them was rewritten")
    if len(held) > len(stream):
        line, checkpoint = held[len(stream)]
        return [], len(held), (
            f"checkpoint #{len(stream) + 1} (records {checkpoint.get('first_seq')}.."
            f"{checkpoint.get('seq')}, {line}) is missing from {keys.CHECKPOINTS}: removed")
    numbered = [_Numbered(n, f"{keys.CHECKPOINTS} entry {entry_id}", c)
                for n, (entry_id, c) in enumerate(stream, 1)]
    return numbered, len(held), None


def _verify_once(client: redis.Redis, public_key: Ed25519PublicKey,
                 archive_dir: str | os.PathLike[str] | None) -> CheckpointReport:
    expected_key = key_id(public_key)
    checkpoints, in_file, broken = _agreed(client, archive_dir)
    if broken is None:
        broken = _check_sequence(checkpoints, public_key)
    if broken is None and not checkpoints and client.get(keys.AUDIT_HEAD):
        broken = (f"there is no checkpoint in {keys.CHECKPOINTS}: nothing is signed (is "
                  "the checkpoint task running with IDVCANCEL_AUDIT_SIGNING_KEY?)")
    if broken is not None or not checkpoints:
        return CheckpointReport(len(checkpoints), 0, 0, broken, expected_key, in_file)
    broken, covered, last_seq = _check_records(client, archive_dir, checkpoints)
    pending = max(0, last_seq - int(checkpoints[-1].checkpoint["seq"]))
    return CheckpointReport(len(checkpoints), covered, pending, broken, expected_key, in_file)


def _check_sequence(checkpoints: Sequence[_Numbered], public_key: Ed25519PublicKey
                    ) -> str | None:
    prev: dict[str, Any] | None = None
    for item in checkpoints:
        checkpoint = item.checkpoint
        reason = problem(checkpoint, public_key)
        if reason is None and prev is not None and checkpoint["origin"] != prev["origin"]:
            reason = f"its origin {checkpoint['origin']!r} is not {prev['origin']!r}"
        if reason is None:
            wanted = digest(prev) if prev is not None else audit.GENESIS
            if checkpoint["prev_checkpoint"] != wanted:
                reason = ("its prev_checkpoint is not the digest of the checkpoint before "
                          "it: a checkpoint was removed or inserted")
        if reason is None:
            first = int(prev["seq"]) + 1 if prev is not None else 1
            if checkpoint["first_seq"] != first:
                reason = (f"it starts at record {checkpoint['first_seq']}, not {first}: "
                          "records between two checkpoints are covered by none")
        if reason is not None:
            return f"{item.describe()}: {reason}"
        prev = checkpoint
    return None


def _check_records(client: redis.Redis, archive_dir: str | os.PathLike[str] | None,
                   checkpoints: Sequence[_Numbered]) -> tuple[str | None, int, int]:
    """Walk the chain from its first record; returns (first failure, records covered,
    last seq walked)."""
    links = _Links()
    index, leaves, covered = 0, [], 0
    for entry in iter_chain(client, archive_dir):
        reason = links.step(entry)
        if reason is not None:
            return f"record {entry.label} (seq {entry.record.get('seq')}): {reason}", \
                covered, links.prev_seq
        if index >= len(checkpoints):
            continue  # after the last checkpoint: pending
        leaves.append(bytes.fromhex(str(entry.record["hash"])))
        item = checkpoints[index]
        if links.prev_seq < int(item.checkpoint["seq"]):
            continue
        if (merkle.tree_hash(leaves).hex() != item.checkpoint["merkle_root"]
                or entry.record["hash"] != item.checkpoint["head"]):
            return (f"{item.describe()}: the chain's records "
                    f"{item.checkpoint['first_seq']}..{item.checkpoint['seq']} do not match "
                    "its signed Merkle root: one of them was edited, removed or inserted "
                    "and the chain re-sealed after it"), covered, links.prev_seq
        covered += len(leaves)
        index, leaves = index + 1, []
    if index < len(checkpoints):
        item = checkpoints[index]
        return (f"{item.describe()}: the chain ends at record {links.prev_seq}, before the "
                f"last record it signed ({item.checkpoint['seq']}): records were removed "
                "from the end"), covered, links.prev_seq
    return None, covered, links.prev_seq
