"""Signed checkpoints on fakeredis (its Lua runs there too): what a checkpoint holds,
when one is written, and that verification names each attack — the chain re-sealed after
an edit, a forged checkpoint, one signed by another key, a record removed between two
checkpoints, a checkpoint removed or rewritten in one of its two copies.

The same against a real Redis and the CLI: tests/integration/test_checkpoints_e2e.py and
tests/reliability/test_audit_tamper.py; a Node.js verifier: test_audit_node.py.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from config.celery import celery_config
from config.settings import Settings
from worker import keys
from worker.contract import canonical_json
from worker.journal import chain as audit
from worker.journal import checkpoints, merkle
from worker.journal.archive import archive_audit
from worker.journal.checkpoints import Signer, load_public_key, load_signer, write_checkpoints

MIDNIGHT = 1_732_406_400_000
NOW = MIDNIGHT / 1000 + 3600


def append(client: fakeredis.FakeRedis, n: int, at_ms: int | None = None) -> list[str]:
    """Append ``n`` sealed records the way the journal does; returns their ids."""
    head = str(client.get(keys.AUDIT_HEAD) or "")
    sealed, new_head = audit.seal_all(
        ({"step": "attempt", "request_id": f"r-{i}", "duration_ms": 1.5} for i in range(n)),
        head)
    start = at_ms if at_ms is not None else MIDNIGHT + 1000 * audit.parse_head(head)[0]
    ids = [str(client.xadd(keys.AUDIT, {"record": canonical_json(r)},
                           id=f"{start + 1000 * i}-0")) for i, r in enumerate(sealed)]
    client.set(keys.AUDIT_HEAD, new_head)
    return ids


def records(client: fakeredis.FakeRedis) -> list[tuple[str, dict[str, Any]]]:
    entries = cast("list[tuple[str, dict[str, str]]]", client.xrange(keys.AUDIT))
    return [(i, json.loads(f["record"])) for i, f in entries]


def rewrite(client: fakeredis.FakeRedis, entries: list[tuple[str, dict[str, Any]]]) -> None:
    """Replace the audit stream (copy to a new one, RENAME over: a tamperer's way)."""
    client.delete("tampered")
    for entry_id, record in entries:
        client.xadd("tampered", {"record": canonical_json(record)}, id=entry_id)
    client.rename("tampered", keys.AUDIT)


def reseal_from(entries: list[tuple[str, dict[str, Any]]], position: int
                ) -> list[tuple[str, dict[str, Any]]]:
    """What a forger who can write Redis does after an edit: re-seal every later record
    (renumbered in order) so the chain verifies again."""
    out = copy.deepcopy(entries)
    prev = out[position - 1][1]["hash"] if position else audit.GENESIS
    for n in range(position, len(out)):
        body = {k: v for k, v in out[n][1].items() if k != "hash"}
        body["prev_hash"], body["seq"] = prev, n + 1
        out[n] = (out[n][0], {**body, "hash": audit.record_hash(body)})
        prev = out[n][1]["hash"]
    return out


def set_head(client: fakeredis.FakeRedis, entries: list[tuple[str, dict[str, Any]]]) -> None:
    client.set(keys.AUDIT_HEAD, f"{entries[-1][1]['seq']}:{entries[-1][1]['hash']}")


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def write(client: fakeredis.FakeRedis, signer: Signer, archive_dir: Path, *,
          max_records: int = 1000, interval: float | None = None, now: float = NOW
          ) -> checkpoints.CheckpointRun:
    return write_checkpoints(client, signer, origin="idvcancel-test", archive_dir=archive_dir,
                             max_records=max_records, interval_seconds=interval, now=now)


def verify(client: fakeredis.FakeRedis, signer: Signer, archive_dir: Path
           ) -> checkpoints.CheckpointReport:
    return checkpoints.verify(client, signer.public_key, archive_dir)


# -- what a checkpoint is -----------------------------------------------------------------


def test_a_checkpoint_signs_the_merkle_root_of_the_records_it_covers(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given seven records
    append(fake_redis, 7)
    # When a checkpoint is written
    run = write(fake_redis, signer, archive_dir)
    # Then it covers records 1..7 with exactly the documented fields
    assert len(run.written) == 1 and run.uncovered == 0
    checkpoint = run.written[0]
    assert sorted(checkpoint) == sorted(checkpoints.FIELDS)
    chain = [r for _, r in records(fake_redis)]
    assert (checkpoint["first_seq"], checkpoint["seq"]) == (1, 7)
    assert checkpoint["head"] == chain[-1]["hash"]
    assert checkpoint["merkle_root"] == merkle.tree_hash(
        [bytes.fromhex(r["hash"]) for r in chain]).hex()
    assert checkpoint["prev_checkpoint"] == "0" * 64 and checkpoint["origin"] == "idvcancel-test"
    # and its signature is Ed25519 over the JCS of the other fields
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    signer.public_key.verify(base64.b64decode(checkpoint["signature"]), audit.jcs(body))
    # and it is in the stream and in the archive directory, the same
    [(_, in_stream)] = checkpoints.read_checkpoints(fake_redis)
    [(_, in_file)] = checkpoints.read_file(archive_dir)
    assert in_stream == in_file == checkpoint


def test_the_next_checkpoint_covers_the_records_since_and_names_the_one_before(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given a checkpoint over five records, and three more records after it
    append(fake_redis, 5)
    first = write(fake_redis, signer, archive_dir).written[0]
    append(fake_redis, 3)
    # When the next checkpoint is written
    second = write(fake_redis, signer, archive_dir).written[0]
    # Then it covers 6..8 and chains to the first by its digest
    assert (second["first_seq"], second["seq"]) == (6, 8)
    assert second["prev_checkpoint"] == checkpoints.digest(first)
    # and with nothing new, nothing is written
    assert write(fake_redis, signer, archive_dir).written == ()


def test_the_periodic_run_waits_for_the_interval_or_the_record_count(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given a first checkpoint
    append(fake_redis, 2)
    write(fake_redis, signer, archive_dir, now=NOW)
    # When 12 records arrive, a checkpoint holds at most 5, and the interval (1 h) has
    # not passed
    append(fake_redis, 12)
    run = write(fake_redis, signer, archive_dir, max_records=5, interval=3600, now=NOW + 60)
    # Then two full checkpoints are written and two records wait
    assert [(c["first_seq"], c["seq"]) for c in run.written] == [(3, 7), (8, 12)]
    assert run.uncovered == 2
    # And the two that wait are covered once the interval has passed since the last one
    assert write(fake_redis, signer, archive_dir, max_records=5, interval=3600,
                 now=NOW + 3600).written == ()
    later = write(fake_redis, signer, archive_dir, max_records=5, interval=3600,
                  now=NOW + 3661)
    assert [(c["first_seq"], c["seq"]) for c in later.written] == [(13, 14)]
    assert verify(fake_redis, signer, archive_dir).broken is None


def test_a_record_that_does_not_verify_is_never_signed(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given a chain whose fourth record was edited (not re-sealed)
    append(fake_redis, 6)
    entries = records(fake_redis)
    entries[3][1]["outcome"] = "cancelled"
    rewrite(fake_redis, entries)
    # When a checkpoint is written
    run = write(fake_redis, signer, archive_dir)
    # Then it covers only the three records before it, and names the edited one
    assert [(c["first_seq"], c["seq"]) for c in run.written] == [(1, 3)]
    assert run.broken is not None and f"record {entries[3][0]} (seq 4)" in run.broken
    assert "edited" in run.broken


def test_two_writers_at_once_never_fork_the_checkpoints(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given a checkpoint head that another run moves between our read and our write
    append(fake_redis, 3)
    write(fake_redis, signer, archive_dir)
    append(fake_redis, 3)
    stale = checkpoints.read_head(fake_redis)
    write(fake_redis, signer, archive_dir)  # the other run
    # When this run commits after the stale head
    script = fake_redis.register_script(checkpoints._LUA)
    pending = checkpoints._Pending([b"\0" * 32], 4, checkpoints.Entry("9-0", "9-0", {
        "seq": 6, "hash": "ab" * 32}))
    assert stale is not None
    made = checkpoints._commit(script, signer, "x", stale.digest, pending, NOW)
    # Then nothing is appended: the checkpoints stay one chain
    assert made is None
    assert len(checkpoints.read_checkpoints(fake_redis)) == 2
    assert verify(fake_redis, signer, archive_dir).broken is None


def test_records_already_archived_are_read_from_the_archive_files(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path) -> None:
    # Given ten records, six of them moved to the archive before any checkpoint
    append(fake_redis, 10)
    archive_audit(fake_redis, archive_dir, older_than_seconds=0,
                  now=(MIDNIGHT + 5500) / 1000)
    assert fake_redis.xlen(keys.AUDIT) == 4
    # When the first checkpoint is written
    run = write(fake_redis, signer, archive_dir)
    # Then it covers all ten, from the files and then Redis, and verifies
    assert [(c["first_seq"], c["seq"]) for c in run.written] == [(1, 10)]
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is None and report.covered == 10
    # but without the archive directory the archived records cannot be read
    with pytest.raises(checkpoints.ArchiveIncomplete, match="archive directory"):
        checkpoints.verify(fake_redis, signer.public_key, None)


# -- keys -------------------------------------------------------------------------------


def test_keys_are_read_from_pem_files(tmp_path: Path, signer: Signer) -> None:
    # Given the private key as PKCS#8 PEM and its public key as printed by the CLI
    private = tmp_path / "signing.pem"
    private.write_bytes(signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    public = tmp_path / "public.pem"
    public.write_text(checkpoints.public_pem(signer.public_key))
    # Then both load, and name the same key
    assert load_signer(str(private)).key_id == checkpoints.key_id(load_public_key(str(public)))
    # and what is not an Ed25519 key is refused, naming the file
    with pytest.raises(checkpoints.SigningKeyError, match="not a PEM public key"):
        load_public_key(str(private))
    with pytest.raises(checkpoints.SigningKeyError, match="cannot read"):
        load_signer(str(tmp_path / "missing.pem"))


# -- attacks ------------------------------------------------------------------------------


@pytest.fixture
def signed(fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path
           ) -> list[tuple[str, dict[str, Any]]]:
    """Twenty records under two checkpoints (1..10, 11..20) and five pending after."""
    append(fake_redis, 10)
    write(fake_redis, signer, archive_dir)
    append(fake_redis, 10)
    write(fake_redis, signer, archive_dir)
    append(fake_redis, 5)
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is None, report.broken
    assert (report.checkpoints, report.covered, report.pending) == (2, 20, 5)
    return records(fake_redis)


def test_an_edit_with_the_whole_tail_resealed_is_named_by_its_checkpoint(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given a forger who edits record 13 and re-seals every record after it and the head
    entries = copy.deepcopy(signed)
    entries[12][1]["outcome"] = "cancelled"
    forged = reseal_from(entries, 12)
    rewrite(fake_redis, forged)
    set_head(fake_redis, forged)
    # Then the chain alone verifies (the old limitation) ...
    assert audit.verify(forged)[1] is None
    # ... but the checkpoint that signed records 11..20 names the forgery
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and "checkpoint #2 (records 11..20" in report.broken
    assert "Merkle root" in report.broken


def test_a_forged_checkpoint_is_named(fake_redis: fakeredis.FakeRedis, signer: Signer,
                                      archive_dir: Path,
                                      signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given the forger also rewrote checkpoint 1's root to match a re-sealed chain, in
    # both copies, keeping the old signature (they do not hold the key)
    stream = checkpoints.read_checkpoints(fake_redis)
    forged = [c for _, c in stream]
    forged[0]["merkle_root"] = "00" * 32
    fake_redis.delete(keys.CHECKPOINTS)
    for checkpoint in forged:
        fake_redis.xadd(keys.CHECKPOINTS, {"checkpoint": json.dumps(checkpoint)})
    (archive_dir / checkpoints.CHECKPOINT_FILE).write_text(
        "".join(json.dumps(c) + "\n" for c in forged))
    # Then verification names checkpoint 1's signature
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and report.broken.startswith("checkpoint #1 ")
    assert "signature does not verify" in report.broken


def test_a_checkpoint_signed_by_another_key_is_named(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given a verifier who holds another public key than the one that signed
    other = Signer(Ed25519PrivateKey.generate())
    # Then the first checkpoint is named as signed by another key
    report = verify(fake_redis, other, archive_dir)
    assert report.broken is not None and report.broken.startswith("checkpoint #1 ")
    assert "signed by another key" in report.broken


def test_a_record_removed_between_two_checkpoints_is_named(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given record 15 removed and the chain re-sealed (renumbered) after it
    entries = [*signed[:14], *signed[15:]]
    forged = reseal_from(entries, 14)
    rewrite(fake_redis, forged)
    set_head(fake_redis, forged)
    # Then the second checkpoint, which signed 11..20, names it
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and "checkpoint #2 (records 11..20" in report.broken


def test_a_record_removed_without_resealing_is_named_as_a_record(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given record 15 simply removed
    rewrite(fake_redis, [*signed[:14], *signed[15:]])
    # Then the record after the gap is named
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None
    assert report.broken.startswith(f"record {signed[15][0]} (seq 16)")


def test_a_checkpoint_removed_from_between_two_is_named(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given three checkpoints, and the middle one removed from both copies
    write(fake_redis, signer, archive_dir)
    kept = [c for n, (_, c) in enumerate(checkpoints.read_checkpoints(fake_redis)) if n != 1]
    fake_redis.delete(keys.CHECKPOINTS)
    for checkpoint in kept:
        fake_redis.xadd(keys.CHECKPOINTS, {"checkpoint": json.dumps(checkpoint)})
    (archive_dir / checkpoints.CHECKPOINT_FILE).write_text(
        "".join(json.dumps(c) + "\n" for c in kept))
    # Then the one after the gap is named
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and report.broken.startswith("checkpoint #2 ")
    assert "removed or inserted" in report.broken


def test_checkpoints_removed_from_redis_are_found_in_the_file(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given the last checkpoint deleted from the stream (the file in the archive keeps it)
    last_id, _ = checkpoints.read_checkpoints(fake_redis)[-1]
    fake_redis.xdel(keys.CHECKPOINTS, last_id)
    # Then verification names it as removed
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and "checkpoint #2 " in report.broken
    assert "missing from idvcancel:checkpoints" in report.broken


def test_a_checkpoint_rewritten_in_one_copy_is_named(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given the file's first line changed (the stream keeps the signed checkpoint)
    path = archive_dir / checkpoints.CHECKPOINT_FILE
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"origin":"idvcancel-test"', '"origin":"elsewhere"')
    path.write_text("\n".join(lines) + "\n")
    # Then the two copies of checkpoint 1 are named as differing
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and report.broken.startswith("checkpoint #1 differs")


def test_records_cut_off_the_end_of_a_checkpoint_are_named(
        fake_redis: fakeredis.FakeRedis, signer: Signer, archive_dir: Path,
        signed: list[tuple[str, dict[str, Any]]]) -> None:
    # Given the chain cut back to record 17 (and its head rewritten to match)
    rewrite(fake_redis, signed[:17])
    set_head(fake_redis, signed[:17])
    # Then the checkpoint that signed up to 20 says records are missing
    report = verify(fake_redis, signer, archive_dir)
    assert report.broken is not None and "checkpoint #2 " in report.broken
    assert "chain ends at record 17" in report.broken


# -- settings, beat and the task ------------------------------------------------------------


def test_checkpoint_settings_have_their_defaults_and_env_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no IDVCANCEL_AUDIT_* variables: no key, an hourly checkpoint of at most 10,000
    settings = Settings()
    assert (settings.audit_signing_key, settings.audit_origin,
            settings.audit_checkpoint_interval_seconds, settings.audit_checkpoint_records,
            settings.audit_checkpoint_queue) == ("", "idvcancel", 3600, 10_000, "idvcancel")
    assert settings.checkpoint_tick_seconds == 60
    # When each is set
    monkeypatch.setenv("IDVCANCEL_AUDIT_SIGNING_KEY", "/etc/idvcancel/audit.pem")
    monkeypatch.setenv("IDVCANCEL_AUDIT_ORIGIN", "idvcancel-eu-prod")
    monkeypatch.setenv("IDVCANCEL_AUDIT_CHECKPOINT_INTERVAL_SECONDS", "30")
    monkeypatch.setenv("IDVCANCEL_AUDIT_CHECKPOINT_RECORDS", "500")
    monkeypatch.setenv("IDVCANCEL_AUDIT_CHECKPOINT_QUEUE", "idvcancel.signer")
    # Then each is read, and beat looks as often as the interval when it is shorter
    settings = Settings()
    assert (settings.audit_signing_key, settings.audit_origin,
            settings.audit_checkpoint_interval_seconds, settings.audit_checkpoint_records,
            settings.audit_checkpoint_queue) == ("/etc/idvcancel/audit.pem",
                                                 "idvcancel-eu-prod", 30, 500,
                                                 "idvcancel.signer")
    assert settings.checkpoint_tick_seconds == 30


def test_beat_sends_the_checkpoint_task_to_the_signers_queue() -> None:
    from worker.app import app

    # Given beat configured for a separate signer queue
    settings = Settings(audit_checkpoint_queue="idvcancel.signer")
    entry = celery_config(settings)["beat_schedule"]["idvcancel-checkpoint"]
    assert entry["task"] == "idvcancel.checkpoint" and entry["schedule"] == 60
    # When Celery routes the task with beat's options
    route = app.amqp.router.route(dict(entry["options"]), "idvcancel.checkpoint")
    # Then it goes to the signer's queue, not the workers' (task_routes say idvcancel.*)
    assert route["queue"].name == "idvcancel.signer"


def test_the_worker_runs_the_checkpoint_task(fake_redis: fakeredis.FakeRedis, tmp_path: Path,
                                             signer: Signer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.checkpoint as task_module
    from worker.app import app

    # Given the worker app, four records and a signing key file
    assert "tasks.checkpoint" in app.conf.include
    append(fake_redis, 4)
    key = tmp_path / "audit.pem"
    key.write_bytes(signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    settings = Settings(audit_signing_key=str(key), audit_archive_dir=str(tmp_path / "a"))
    monkeypatch.setattr(task_module, "get_settings", lambda: settings)
    monkeypatch.setattr(task_module, "shared_client", lambda _settings: fake_redis)
    # When the task runs
    summary = app.tasks["idvcancel.checkpoint"].apply().get()
    # Then the first checkpoint is written (no previous one: due at once)
    assert summary["ok"] is True and summary["written"] == 1
    # and the next run, with two new records and the hour not passed, waits
    append(fake_redis, 2)
    again = app.tasks["idvcancel.checkpoint"].apply().get()
    assert again["written"] == 0 and again["uncovered"] == 2
    # And a process without the key signs nothing, and says so
    monkeypatch.setattr(task_module, "get_settings", Settings)
    unsigned = app.tasks["idvcancel.checkpoint"].apply().get()
    assert unsigned["ok"] is False and unsigned["error"]["code"] == "no_signing_key"
