"""Do the services a command needs answer? Asked once, up front, within a second.

The clients the commands then work with ride out short blips (``worker.redis_client``:
retries with backoff, seconds in all), which is right half-way through a long
``results --follow`` but wrong for the first question: an operator whose Redis is down
is told so within a second, in one line naming the service, where (password masked)
and the variable that says where. ``unreachable`` names the service behind a connection
error met later, half-way through a command.
"""

from __future__ import annotations

import redis

from config.broker import is_amqp
from config.settings import Settings
from config.urls import masked
from worker.errors import IdvCancelError, Unreachable
from worker.redis_client import probe_client

#: How long a probe waits to connect, and then for the answer: half a second each, so
#: that even a server that accepts the connection and then says nothing is reported
#: within a second.
PROBE_SECONDS = 0.5


def reach_redis(settings: Settings) -> None:
    """Raise ``Unreachable`` unless the state store's Redis answers a PING."""
    _ping(settings.redis_url, "IDVCANCEL_REDIS_URL")


def reach_broker(settings: Settings) -> None:
    """Raise ``Unreachable`` unless the broker (when it is not the state store) answers."""
    url = settings.broker_url
    if not url or url == settings.redis_url:
        return
    if not is_amqp(url):
        _ping(url, "IDVCANCEL_BROKER_URL")
        return
    import kombu
    import kombu.exceptions

    connection = kombu.Connection(url, connect_timeout=PROBE_SECONDS)
    try:
        # Each node of a ';'-joined URL once, without sleeping in between.
        connection.ensure_connection(max_retries=max(len(url.split(";")) - 1, 0),
                                     interval_start=0, interval_step=0)
    except kombu.exceptions.OperationalError as exc:
        raise Unreachable("RabbitMQ", masked(url), "IDVCANCEL_BROKER_URL", str(exc)) from None
    finally:
        connection.release()


def _ping(url: str, variable: str) -> None:
    client = probe_client(url, timeout=PROBE_SECONDS)
    try:
        client.ping()
    except redis.InvalidResponse as exc:  # something else listens there (an HTTP proxy...)
        raise Unreachable("Redis", masked(url), variable,
                          f"what answers is not Redis ({exc})") from None
    except redis.RedisError as exc:  # refused, timed out, a password wanted or refused
        raise Unreachable("Redis", masked(url), variable, str(exc)) from None
    finally:
        client.close()


def unreachable(exc: BaseException, settings: Settings) -> Unreachable | None:
    """``exc`` as the service it failed to reach, or None when it is no connection error
    (nor is one of our own: a broker's refusal, ``PublishNotConfirmed``, says itself what
    happened).

    Examples:
        >>> print(unreachable(redis.ConnectionError("Connection refused."),
        ...                   Settings(redis_url="redis://:pw@cache:6379/0")))
        cannot reach Redis at redis://:***@cache:6379/0 (IDVCANCEL_REDIS_URL): Connection refused.
        >>> unreachable(FileNotFoundError("x"), Settings()) is None
        True
    """
    import amqp.exceptions
    import kombu.exceptions

    if isinstance(exc, Unreachable):
        return exc
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return Unreachable("Redis", masked(settings.redis_url), "IDVCANCEL_REDIS_URL", str(exc))
    if isinstance(exc, ConnectionError | kombu.exceptions.OperationalError
                  | amqp.exceptions.ConnectionError) and not isinstance(exc, IdvCancelError):
        service = "RabbitMQ" if settings.broker_is_amqp else "Redis"
        variable = "IDVCANCEL_BROKER_URL" if settings.broker_url else "IDVCANCEL_REDIS_URL"
        return Unreachable(service, masked(settings.broker), variable,
                           str(exc) or type(exc).__name__)
    return None
