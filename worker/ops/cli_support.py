"""What every ``idvcancel`` command shares: exit codes, the one-line error, the group
class that turns any error into that line (``one_line``: a bad setting, an unreachable
Redis or RabbitMQ, our own errors), the Redis client and the producer built from the
settings once their servers answered (``worker.ops.reach``), and JSON output.
``worker.ops.cli`` and ``worker.ops.cli_proof`` import it.
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


def say_error(message: str) -> None:
    """``idvcancel: error: MESSAGE`` on stderr, on one line whatever ``message`` holds."""
    click.echo(f"idvcancel: error: {' '.join(message.splitlines())}", err=True)


def fail(message: str, code: int = EXIT_CHECK_FAILED) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    say_error(message)
    sys.exit(code)


def one_line(exc: Exception) -> tuple[str, int] | None:
    """What a command that raised ``exc`` says, and exits with; None for a bug (its
    traceback is then the report). The one place where a bad setting (exit 2), an
    unreachable Redis or RabbitMQ (exit 1) and our own errors become one line."""
    from pydantic import ValidationError

    from config.settings import Settings, describe_settings_error, get_settings
    from worker.errors import IdvCancelError, InvalidInput
    from worker.ops.reach import unreachable

    if isinstance(exc, ValidationError):
        if exc.title != Settings.__name__:
            return None
        return describe_settings_error(exc), EXIT_USAGE
    try:
        lost = unreachable(exc, get_settings())
    except ValidationError:  # cannot be: a command that got this far had read them
        lost = None
    if lost is not None:
        return str(lost), EXIT_CHECK_FAILED
    if isinstance(exc, IdvCancelError):
        code = EXIT_USAGE if isinstance(exc, InvalidInput) else EXIT_CHECK_FAILED
        return str(exc), int(getattr(exc, "exit_code", code))
    return None


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
                say_error(f"{exc.format_message()}{hint}")
                code = exc.exit_code
        except click.Abort:
            say_error("aborted")
            code = EXIT_CHECK_FAILED
        except KeyboardInterrupt:
            code = 130  # the shell's convention for Ctrl-C
        except Exception as exc:
            said = one_line(exc)
            if said is None:
                raise
            message, code = said
            say_error(message)
        if standalone_mode:
            sys.exit(code)
        return code


def _client() -> redis.Redis:
    """The state store's Redis, once it answered (else ``Unreachable`` within a second)."""
    from config.settings import get_settings
    from worker.ops.reach import reach_redis
    from worker.redis_client import redis_client

    settings = get_settings()
    reach_redis(settings)
    return redis_client(settings.redis_url)


def _producer() -> Producer:
    """A producer, once the state store and the broker answered."""
    from config.settings import get_settings
    from worker.broker.producer import Producer
    from worker.ops.reach import reach_broker, reach_redis

    settings = get_settings()
    reach_redis(settings)
    reach_broker(settings)
    # With the settings, so that messages are signed when the workers require it.
    return Producer(settings.redis_url, settings)


def echo_json(value: Any) -> None:
    """One JSON document on one line (stdout is flushed, so a pipe sees it at once)."""
    click.echo(json.dumps(value, sort_keys=True, default=str))


def _archive_dir(given: str | None) -> str:
    from config.settings import get_settings

    return given or get_settings().audit_archive_dir
