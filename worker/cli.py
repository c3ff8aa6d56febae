"""``idvcancel``: the operator's command line. Every command has ``--help``.

Exit codes a script can rely on: 0 success, 1 the check failed (a broken audit chain,
a request not found), 2 bad usage or bad input.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from worker.contract import json_schemas

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def _redis_url() -> str:
    from config.settings import get_settings

    return get_settings().redis_url


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """idv-cancel: cancel and delete identity-verification sessions at the providers."""


@main.command()
def schema() -> None:
    """Print the contract (request, result event, streams) as JSON Schema."""
    click.echo(json.dumps(json_schemas(), indent=2))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", default=32, show_default=True,
              help="Requests in flight per worker process (threads).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run a worker for production: the thread pool, the idvcancel queue, no gossip.

    Extra arguments are passed on to ``celery worker``.
    """
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "idvcancel",
            "-P", "threads", "-c", str(concurrency), "-l", loglevel,
            "--without-gossip", "--without-mingle", *celery_args]
    os.execv(sys.executable, argv)  # noqa: S606 - replace this process with the worker


@main.group()
def audit() -> None:
    """The hash-chained audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Walk the audit chain; name the first broken record and exit 1 if there is one."""
    from worker.audit_store import verify_stream
    from worker.services import redis_client

    count, broken = verify_stream(redis_client(_redis_url()))
    if broken is not None:
        click.echo(f"audit chain BROKEN after {count} good records: {broken.describe()}",
                   err=True)
        sys.exit(EXIT_CHECK_FAILED)
    click.echo(f"audit chain OK: {count} records")


@main.command()
@click.option("--batch", default="sample", show_default=True,
              help="Which sample batch to send (only 'sample' for now).")
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
def demo(batch: str, workers: int) -> None:
    """Run the whole job end to end on this machine and print what happened.

    Uses IDVCANCEL_REDIS_URL if set, else a Redis at 127.0.0.1:6379 if one answers, else
    starts an embedded one; starts the provider simulator and a worker, sends a sample
    batch that reaches every outcome, prints the outcomes and verifies the audit chain.
    """
    from worker.demo import run_demo

    sys.exit(run_demo(workers=workers))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--autocreate", is_flag=True, help="Treat unknown references as live sessions.")
def simulate(host: str, port: int, autocreate: bool) -> None:
    """Run the provider simulator (all five APIs) until interrupted."""
    from worker.simulator.server import main as sim_main

    args: list[str] = ["--host", host, "--port", str(port)]
    if autocreate:
        args.append("--autocreate")
    sim_main(args)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=True))
