"""``idvcancel``: the operator's command line. Every command has ``--help``.

Exit codes a script can rely on: 0 success, 1 the check failed (a broken audit chain,
a request not found, Redis unreachable), 2 bad usage or bad input. Errors go to stderr
as one line starting ``idvcancel: error:``. The logic lives in ``worker.broker.producer``,
``worker.ops.results`` and ``worker.ops.deadletters``; this module only parses and prints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import click

from worker.contract import PROVIDERS, Outcome, json_schemas
from worker.ops.cli_support import (
    EXIT_USAGE,
    Cli,
    _archive_dir,
    _client,
    _producer,
    echo_json,
    fail,
)

if TYPE_CHECKING:

    from worker.broker.producer import Producer

@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """idv-cancel: cancel and delete identity-verification sessions at the providers."""


@main.command()
def schema() -> None:
    """Print the contract (request, result event, streams) as JSON Schema."""
    click.echo(json.dumps(json_schemas(), indent=2))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run a worker for production: ``celery -A worker.app worker`` with the app's
    configured pool (IDVCANCEL_WORKER_PROCESSES processes, default one per core, each with
    IDVCANCEL_WORKER_THREADS threads, default 128), the app's queues (``idvcancel``, and
    on RabbitMQ its dead-letter queue ``idvcancel.dead``), no gossip.

    Extra arguments are passed on to ``celery worker`` (``-c 64``: threads per process).
    """
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", loglevel,
            "--without-gossip", "--without-mingle", *celery_args]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with the worker


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat (the periodic tasks, such as the sweep): ``celery -A worker.app beat``.

    Run exactly one beat for the whole deployment. Extra arguments are passed on to
    ``celery beat`` (for example ``-s /var/lib/idvcancel/celerybeat-schedule``).
    """
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-l", loglevel,
            *celery_args]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with beat


# -- submit -------------------------------------------------------------------------------


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="'--option'")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _request_from_flags(flags: dict[str, Any], options: tuple[str, ...]) -> dict[str, Any]:
    request = {name: value for name, value in flags.items() if value is not None}
    if options:
        request["options"] = dict(_parse_option(o) for o in options)
    return request


def _submit_file(producer: Producer, file: IO[str]) -> None:
    from worker.broker.producer import load_jsonl
    from worker.errors import InvalidRequests

    try:
        requests = load_jsonl(file)
    except InvalidRequests as exc:
        # One line per bad line, each with its own number; the last says what happened.
        *first, last = exc.problems
        for problem in first:
            click.echo(f"idvcancel: error: {file.name}: line {problem.index}: {problem.reason}",
                       err=True)
        bad = len(exc.problems)
        fail(f"{file.name}: line {last.index}: {last.reason}; nothing was sent"
             + (f" ({bad} bad lines)" if bad > 1 else ""), EXIT_USAGE)
    with click.progressbar(length=len(requests), label="submitting", file=sys.stderr,
                           show_pos=True) as bar:
        producer.submit_many(requests, on_sent=bar.update)
    click.echo(f"submitted {len(requests)} request{'' if len(requests) == 1 else 's'}")


@main.command()
@click.option("--request-id", help="The idempotency key: carried out once.")
@click.option("--provider", type=click.Choice(PROVIDERS))
@click.option("--action", type=click.Choice(["cancel", "delete"]))
@click.option("--reference", help="The provider's id of the session or transaction.")
@click.option("--reason", help="Why (required by gu1). No personal data: it is audited.")
@click.option("--source", type=click.Choice(["api", "sweep", "supersede", "manual"]),
              help="Default: api.")
@click.option("--requested-by", help="The service or person asking.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A provider option (repeatable); the value is read as JSON when it is "
                   "JSON, e.g. --option product=scan --option grace_period=7.")
@click.option("--file", "file", type=click.File("r"), metavar="FILE.jsonl",
              help="Submit every request of a JSON Lines file ('-' = stdin) instead. "
                   "All lines are checked first: one bad line and nothing is sent.")
def submit(file: IO[str] | None, options: tuple[str, ...], **flags: Any) -> None:
    """Validate and enqueue one request (flags) or many (--file).

    \b
    Examples:
      idvcancel submit --request-id r-1 --provider idpass --action cancel \\
          --reference fe4291ca-d831-4760-96df-c9cb03b3cd95 --requested-by ops
      idvcancel submit --file requests.jsonl
    """
    from worker.errors import InvalidRequest

    if file is not None and (options or any(v is not None for v in flags.values())):
        raise click.UsageError("give either --file or the request's flags, not both")
    producer = _producer()
    try:
        if file is not None:
            _submit_file(producer, file)
            return
        try:
            request_id = producer.submit(_request_from_flags(flags, options))
        except InvalidRequest as exc:
            fail(f"invalid request: {exc.reason}; nothing was sent", EXIT_USAGE)
        click.echo(request_id)
    finally:
        producer.close()


# -- results and status -------------------------------------------------------------------


@main.command()
@click.option("--follow/--no-follow", default=False, show_default=True,
              help="Keep waiting for new events (Ctrl-C to stop).")
@click.option("--new-only", is_flag=True,
              help="Skip the events already in the stream (with --follow).")
@click.option("--request-id", help="Only this request's events.")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Only this provider's events.")
@click.option("--outcome", type=click.Choice([o.value for o in Outcome]),
              help="Only events with this outcome.")
def results(follow: bool, new_only: bool, request_id: str | None, provider: str | None,
            outcome: str | None) -> None:
    """Print result events, one JSON object per line, oldest first."""
    from worker.ops.results import follow as follow_events

    if new_only and not follow:
        raise click.UsageError("--new-only only makes sense with --follow")
    events = follow_events(_client(), request_id=request_id, provider=provider,
                           outcome=outcome, from_start=not new_only,
                           block_ms=5000 if follow else None)
    try:
        for event in events:
            echo_json(event)
    except KeyboardInterrupt:
        return


@main.command()
@click.argument("request_id")
def status(request_id: str) -> None:
    """Show one request: its ledger (phase, attempts, outcome, replays), whether it is in
    the intake index (pushed, not yet done) or parked (held back by the rate limit or the
    breaker: where, until when), result event(s), dead letter and audit trail.
    Exit 1 when nothing is known about it.

    Reads the audit and result streams from the start: fine for a person, not a script
    that asks about every request.
    """
    from worker.ops.results import status as request_status

    found = request_status(_client(), request_id)
    if not found["found"]:
        fail(f"unknown request id {request_id!r}: no ledger, audit record, result or dead "
             "letter")
    click.echo(json.dumps(found, indent=2, sort_keys=True, default=str))


# -- dead letters -------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """Dead letters: requests that ended failed or unauthorized, and unreadable messages."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def dlq_list(limit: int) -> None:
    """Print dead letters, oldest first, one JSON object per line."""
    from worker.ops.deadletters import list_entries

    for entry in list_entries(_client(), limit):
        echo_json(entry)


@dlq.command("replay")
@click.argument("request_id", required=False)
@click.option("--all", "replay_every", is_flag=True, help="Replay every replayable entry.")
def dlq_replay(request_id: str | None, replay_every: bool) -> None:
    """Send dead-lettered requests again, once their cause is fixed.

    The ledger is reset (phase waiting, attempts 0, replays + 1), a 'replayed' audit record
    is written, the request is enqueued and the entry removed. The request then gets a
    NEW result event. Unreadable messages (ids task:<id>) cannot be replayed.
    """
    from worker.errors import DeadLetterError
    from worker.ops.deadletters import replay, replay_all

    if replay_every == (request_id is not None):
        raise click.UsageError("give one REQUEST_ID or --all")
    client, producer = _client(), _producer()
    try:
        if replay_every:
            for result in replay_all(client, producer):
                echo_json(result.as_dict())
            return
        assert request_id is not None
        try:
            echo_json(replay(client, producer, request_id).as_dict())
        except DeadLetterError as exc:
            fail(str(exc), exc.exit_code)
    finally:
        producer.close()


# -- sweep --------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    import dataclasses

    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "_asdict"):
        return value._asdict()
    return value


@main.command()
@click.option("--dry-run", is_flag=True, help="Print what the sweep would send; send nothing.")
def sweep(dry_run: bool) -> None:
    """Show what the periodic sweep would enqueue now (one JSON object per line).

    The sweep itself runs as a periodic task under 'idvcancel beat'.
    """
    if not dry_run:
        raise click.UsageError("the sweep runs under 'idvcancel beat'; use --dry-run to see "
                               "what it would send now")
    try:
        from worker.triggers.sweep import plan_sweep  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        fail("this version has no sweep (worker.triggers.sweep is missing)")
    from config.settings import get_settings

    plan = plan_sweep(_client(), get_settings(), time.time())
    items = plan if isinstance(plan, list | tuple) else [plan]
    for item in items:
        echo_json(_jsonable(item))


# -- audit, demo, simulator ---------------------------------------------------------------


@main.group()
def audit() -> None:
    """The hash-chained audit trail."""




@audit.command("verify")
@click.option("--archive", "archive", is_flag=False, flag_value="", default=None,
              metavar="[DIR]",
              help="Also walk the archive files (default dir: IDVCANCEL_AUDIT_ARCHIVE_DIR) "
                   "and then Redis as one chain from the first record.")
@click.option("--public-key", "public_key", default=None, metavar="FILE",
              help="Also check every signed checkpoint with this Ed25519 public key (PEM, "
                   "from 'idvcancel audit public-key'), that the checkpoints in Redis and "
                   "in the archive directory agree, and that the chain matches each one.")
def audit_verify(archive: str | None, public_key: str | None) -> None:
    """Walk the audit chain; name the first broken record and exit 1 if there is one.

    Without --archive, the chain held in Redis is walked from the last archived record
    (idvcancel:audit:archived) on. A break in an archive file is named FILE:LINE.
    With --public-key, the checkpoints are verified too (the archive directory is read
    when it exists, for archived records and checkpoints.jsonl), and the first record or
    checkpoint that does not match is named: a chain re-sealed after an edit shows.
    """
    from worker.errors import ArchiveError
    from worker.journal import verdicts
    from worker.journal.verify import verify_archive, verify_redis
    from worker.ops.cli_proof import load_key_or_fail, report_checkpoints

    client = _client()
    key = None if public_key is None else load_key_or_fail(public_key)
    directory = None if archive is None else _archive_dir(archive)
    if directory is not None and not os.path.isdir(directory):
        fail(f"no archive directory {directory!r}", EXIT_USAGE)
    try:
        report = (verify_redis(client) if directory is None
                  else verify_archive(client, directory))
    except ArchiveError as exc:
        verdicts.record(client, "cli", verdicts.Verdict(False, time.time()))
        fail(str(exc))
    verdicts.record(client, "cli", verdicts.Verdict(report.broken is None, time.time()))
    if report.broken is not None:
        fail(f"audit chain BROKEN after {report.count} good records: "
             f"{report.broken.describe()}")
    if key is not None:
        report_checkpoints(client, key, directory if directory is not None
                            else _archive_dir(None), report.count)
        return
    if directory is not None:
        click.echo(f"audit chain OK: {report.count} records ({report.in_archive} in "
                   f"{directory}, {report.in_redis} in Redis)")
    elif report.head is not None:
        click.echo(f"audit chain OK: {report.count} records (continuing from the archived "
                   f"{report.head.describe()})")
    else:
        click.echo(f"audit chain OK: {report.count} records")


@audit.command("archive")
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=None,
              metavar="SECONDS",
              help="Archive records older than this (default: "
                   "IDVCANCEL_AUDIT_RETENTION_SECONDS).")
@click.option("--dir", "directory", default=None, metavar="DIR",
              help="The archive directory (default: IDVCANCEL_AUDIT_ARCHIVE_DIR).")
def audit_archive(older_than: float | None, directory: str | None) -> None:
    """Move old audit records from Redis to the archive files (what the periodic task
    idvcancel.retention does), and print what was done as one JSON object.

    Records are written and fsynced before they leave Redis; the chain left in Redis
    continues from the last archived one. Exit 1 when another run holds the lock, the
    directory does not hold the records already archived, or a record does not verify
    (archiving stops before it).
    """
    from config.settings import get_settings
    from worker.errors import ArchiveError
    from worker.journal.archive import archive_audit

    seconds = get_settings().audit_retention_seconds if older_than is None else older_than
    try:
        report = archive_audit(_client(), _archive_dir(directory), seconds, time.time())
    except ArchiveError as exc:
        fail(str(exc))
    echo_json(report.summary())
    if report.broken is not None:
        fail(f"archiving stopped at a broken record: {report.broken.describe()}")


@main.command()
@click.option("--batch", default="sample", show_default=True,
              help="Which sample batch to send (only 'sample' for now).")
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
@click.option("--db", type=click.IntRange(min=0), default=None, metavar="N",
              help="With IDVCANCEL_REDIS_URL: use database N of that server (it may hold "
                   "other keys, none of idv-cancel's). Default: the highest-numbered empty "
                   "one.")
@click.option("--keep", is_flag=True,
              help="With IDVCANCEL_REDIS_URL: keep the demo's keys (and its logs) instead of "
                   "deleting them at the end.")
def demo(batch: str, workers: int, db: int | None, keep: bool) -> None:
    """Run the whole job end to end on this machine and print what happened.

    Without IDVCANCEL_REDIS_URL it starts a Redis of its own and removes it afterwards.
    With it, it uses a database of its own on that server (never db 0; --db N to choose)
    and deletes the keys it wrote when it ends (--keep to keep them). Redis and the
    broker (IDVCANCEL_BROKER_URL, when set) are checked before anything starts. It starts
    the provider simulator and a worker, sends a sample batch that reaches every outcome,
    prints the outcomes and verifies the audit chain; its logs are removed on success and
    kept (and named) otherwise.
    """
    from worker.errors import DemoError
    from worker.local.demo import run_demo

    if (db is not None or keep) and not os.environ.get("IDVCANCEL_REDIS_URL"):
        raise click.UsageError("--db and --keep are for a Redis named in IDVCANCEL_REDIS_URL; "
                               "without it the demo starts a Redis of its own and removes it")
    try:
        code = run_demo(workers=workers, db=db, keep=keep)
    except DemoError as exc:
        fail(str(exc))
    sys.exit(code)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--autocreate", is_flag=True, help="Treat unknown references as live sessions.")
@click.option("--env", "as_env", is_flag=True,
              help="Print the worker's settings as shell export lines (for eval) instead of "
                   "JSON.")
def simulate(host: str, port: int, autocreate: bool, as_env: bool) -> None:
    """Run the provider simulator (all five APIs) until interrupted.

    It first prints the settings that point a worker at it (every base URL, credential
    and the Jumio User-Agent): as JSON, or with --env as lines a shell can eval.
    """
    from worker.local.simulator.server import main as sim_main

    args: list[str] = ["--host", host, "--port", str(port)]
    if autocreate:
        args.append("--autocreate")
    if as_env:
        args.append("--env")
    sim_main(args)


# The proof commands (checkpoints, receipts, needs attention) live in worker/ops/cli_proof.py
# and are added to the groups defined above, so they are imported once the groups exist.
from worker.ops.cli_proof import register  # noqa: E402 - needs main and audit defined

register(main, audit)

if __name__ == "__main__":
    main()
