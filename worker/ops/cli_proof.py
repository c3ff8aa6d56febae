"""The ``idvcancel`` commands of the proof a regulator can check: signed checkpoints
(``audit checkpoint``, ``audit public-key``), receipts (``receipt``, ``receipt verify``)
and the needs-attention list (``attention list``, ``attention forget``).

They live apart from ``worker.ops.cli`` so that the operator's command line stays one short
module to read; ``register`` adds them to it. Same conventions: one line on stderr
starting ``idvcancel: error:`` and exit 2 for bad input, 1 for a check that failed.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import click

from worker.ops import cli_support as cli

if TYPE_CHECKING:
    import redis


def register(main: click.Group, audit: click.Group) -> None:
    """Add these commands to the ``idvcancel`` group and its ``audit`` group."""
    audit.add_command(audit_checkpoint)
    audit.add_command(audit_public_key)
    main.add_command(receipt)
    main.add_command(attention_group)


# -- checkpoints ---------------------------------------------------------------------------


def load_key_or_fail(path: str) -> Any:
    from worker.journal.checkpoints import SigningKeyError, load_public_key

    try:
        return load_public_key(path)
    except SigningKeyError as exc:
        cli.fail(str(exc), cli.EXIT_USAGE)


def report_checkpoints(client: redis.Redis, key: Any, directory: str, records: int) -> None:
    from worker.journal.checkpoints import CheckpointError, verify

    try:
        report = verify(client, key, directory if os.path.isdir(directory) else None)
    except CheckpointError as exc:
        cli.fail(str(exc))
    if report.broken is not None:
        cli.fail(f"audit checkpoints BROKEN: {report.broken}")
    pending = (f", {report.pending} after the last one (pending until the next checkpoint)"
               if report.pending else "")
    click.echo(f"audit chain OK: {records} records; {report.checkpoints} signed checkpoints "
               f"verified with key {report.key}, covering {report.covered} records"
               f"{pending}")


def _signer() -> Any:
    from config.settings import get_settings
    from worker.journal.checkpoints import SigningKeyError, load_signer

    settings = get_settings()
    if not settings.audit_signing_key:
        cli.fail("IDVCANCEL_AUDIT_SIGNING_KEY is not set: the path of the Ed25519 private key "
             "(PEM) that signs checkpoints", cli.EXIT_USAGE)
    try:
        return load_signer(settings.audit_signing_key,
                           settings.audit_signing_key_password.get_secret_value())
    except SigningKeyError as exc:
        cli.fail(str(exc), cli.EXIT_USAGE)


@click.command("checkpoint")
@click.option("--dir", "directory", default=None, metavar="DIR",
              help="The audit archive directory, for checkpoints.jsonl and archived records "
                   "(default: IDVCANCEL_AUDIT_ARCHIVE_DIR).")
def audit_checkpoint(directory: str | None) -> None:
    """Sign a checkpoint now covering every record since the last one (what the periodic
    task idvcancel.checkpoint does when one is due), and print what was done as one JSON
    object. Needs IDVCANCEL_AUDIT_SIGNING_KEY. Exit 1 when a record does not verify
    (nothing is signed past it).
    """
    from config.settings import get_settings
    from worker.journal.checkpoints import CheckpointError, write_checkpoints

    settings = get_settings()
    signer = _signer()
    try:
        run = write_checkpoints(cli._client(), signer, origin=settings.audit_origin,
                                archive_dir=cli._archive_dir(directory),
                                max_records=settings.audit_checkpoint_records,
                                interval_seconds=None, now=time.time())
    except CheckpointError as exc:
        cli.fail(str(exc))
    cli.echo_json(run.summary())
    if run.broken is not None:
        cli.fail(f"stopped at a record that does not verify: {run.broken}")


@click.command("public-key")
def audit_public_key() -> None:
    """Print the public key of IDVCANCEL_AUDIT_SIGNING_KEY (PEM): what a verifier needs
    to check checkpoints and receipts."""
    from worker.journal.checkpoints import public_pem

    click.echo(public_pem(_signer().public_key), nl=False)



# -- receipts ------------------------------------------------------------------------------


class _ReceiptGroup(click.Group):
    """``idvcancel receipt REQUEST_ID`` (the ``show`` command) beside ``receipt verify``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group("receipt", cls=_ReceiptGroup)
def receipt() -> None:
    """Receipts: one request's audit records with the proof that each is in the signed log.

    \b
      idvcancel receipt REQUEST_ID > receipt.json
      idvcancel receipt verify receipt.json --public-key audit-public.pem
    """


@receipt.command("show")
@click.argument("request_id")
@click.option("--archive", "archive", default=None, metavar="DIR",
              help="The audit archive directory, for records already archived (default: "
                   "IDVCANCEL_AUDIT_ARCHIVE_DIR).")
def receipt_show(request_id: str, archive: str | None) -> None:
    """Print the receipt of REQUEST_ID: one JSON document (RFC 8785, one line) holding
    the request (no personal data), its outcome and confirmation, every audit record of
    it and, for each, the Merkle inclusion proof up to a signed checkpoint (or "pending
    until the next checkpoint"). Anyone checks it offline with 'receipt verify' and the
    public key. Exit 1 when no audit record of the request is found.

    Reads the chain from its start (archive files, then Redis): fine for a person, not
    for a script that asks about every request.
    """
    from worker.journal.checkpoints import CheckpointError
    from worker.journal.receipts import ReceiptError, build, dumps

    directory = cli._archive_dir(archive)
    try:
        document = build(cli._client(), request_id,
                         directory if os.path.isdir(directory) else None)
    except (ReceiptError, CheckpointError) as exc:
        cli.fail(str(exc))
    click.echo(dumps(document).decode(), nl=False)
    pending = sum(1 for item in document["records"] if item["proof"] is None)
    if pending:
        click.echo(f"idvcancel: note: {pending} record(s) pending until the next checkpoint",
                   err=True)


@receipt.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", "public_key", required=True, metavar="FILE",
              help="The audit public key (PEM, from 'idvcancel audit public-key').")
def receipt_verify(file: str, public_key: str) -> None:
    """Check a receipt offline: every record's hash, every proof up to its checkpoint's
    Merkle root, every checkpoint's signature, and that the request, outcome and
    confirmation are what the records say. Exit 0 when all of it verifies, 1 naming the
    first thing that does not (a record still pending until the next checkpoint too).
    """
    from worker.journal.receipts import verify

    key = load_key_or_fail(public_key)
    with open(file, "rb") as handle:
        data = handle.read()
    report = verify(data, key)
    if report.failure is not None:
        cli.fail(f"receipt {file} does NOT verify: {report.failure}")
    click.echo(f"receipt OK: request {report.request_id}, outcome {report.outcome}, "
               f"confirmation {report.confirmation or 'none'}; {report.proven} records "
               f"proven by {report.checkpoints} signed checkpoints")



# -- needs attention ------------------------------------------------------------------------


@click.group("attention")
def attention_group() -> None:
    """Requests a person must look at again: a cancel or deletion whose confirmation read
    did not show it took hold (the result event still says what the provider answered)."""


@attention_group.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def attention_list(limit: int) -> None:
    """Print the requests that need attention, oldest first, one JSON object per line:
    request id, provider, action, reference, outcome, what the confirmation read showed
    (provider status, HTTP status, error code) and when."""
    from worker.journal.attention import list_entries

    for entry in list_entries(cli._client(), limit):
        cli.echo_json(entry)


@attention_group.command("forget")
@click.argument("request_id")
def attention_forget(request_id: str) -> None:
    """Remove REQUEST_ID from the list once a person has dealt with it (the audit trail
    keeps its confirmation_failed record). Exit 1 when it is not on the list."""
    from worker.journal.attention import forget

    if not forget(cli._client(), request_id):
        cli.fail(f"{request_id!r} is not on the needs-attention list")
    click.echo(f"forgot {request_id}")
