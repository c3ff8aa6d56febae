"""What every ``idvcancel`` command shares: exit codes, the one-line error, the group
class that turns any error into that line, the Redis client and the producer built from
the settings, and JSON output. ``worker.ops.cli`` and ``worker.ops.cli_proof`` import it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    import redis

    from worker.broker.producer import Producer

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_CHECK_FAILED) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    click.echo(f"idvcancel: error: {message}", err=True)
    sys.exit(code)


def _connection_error(exc: Exception) -> bool:
    import kombu.exceptions
    import redis

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError
                      | kombu.exceptions.OperationalError)


class Cli(click.Group):
    """A group whose errors are one line on stderr (click's usage errors included)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``idvcancel``: the help
                exc.show()
                code = EXIT_USAGE
            else:
                hint = ""
                ctx = getattr(exc, "ctx", None)
                if isinstance(exc, click.UsageError) and ctx is not None:
                    hint = f" (see '{ctx.command_path} --help')"
                click.echo(f"idvcancel: error: {exc.format_message()}{hint}", err=True)
                code = exc.exit_code
        except click.Abort:
            click.echo("idvcancel: error: aborted", err=True)
            code = EXIT_CHECK_FAILED
        except KeyboardInterrupt:
            code = 130  # the shell's convention for Ctrl-C
        except Exception as exc:
            if not _connection_error(exc):
                raise
            click.echo(f"idvcancel: error: cannot reach Redis at {_safe_url(_redis_url())}: "
                       f"{exc}", err=True)
            code = EXIT_CHECK_FAILED
        if standalone_mode:
            sys.exit(code)
        return code


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages.

    Examples:
        >>> _safe_url("redis://:s3cret@cache:6379/0")
        'redis://:***@cache:6379/0'
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _redis_url() -> str:
    from pydantic import ValidationError

    from config.settings import get_settings

    try:
        return get_settings().redis_url
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"bad configuration: {first['msg']}", EXIT_USAGE)


def _client() -> redis.Redis:
    from worker.redis_client import redis_client

    return redis_client(_redis_url())


def _producer() -> Producer:
    from config.settings import get_settings
    from worker.broker.producer import Producer

    # With the settings, so that messages are signed when the workers require it.
    return Producer(_redis_url(), get_settings())


def echo_json(value: Any) -> None:
    """One JSON document on one line (stdout is flushed, so a pipe sees it at once)."""
    click.echo(json.dumps(value, sort_keys=True, default=str))

def _archive_dir(given: str | None) -> str:
    from config.settings import get_settings

    return given or get_settings().audit_archive_dir
