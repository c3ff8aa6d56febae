"""What a URL setting accepts, and how a URL is shown in a message.

Each ``check_*`` is a settings validator: it returns the URL it was given, or raises
``ValueError`` with one line saying what is wrong and what would be accepted, so that a
bad URL is refused when the settings are read (naming its variable) instead of breaking
the first connection with a traceback. The URL is parsed by the library that will use
it (redis-py for the state store, kombu for the broker), so that what passes here is
what that library takes. ``masked`` hides a URL's password wherever one is printed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from config.broker import AMQP_SCHEMES, REDIS_SCHEMES

#: What ``IDVCANCEL_REDIS_URL`` accepts, as a message says it.
REDIS_FORM = "redis://[:password@]host[:port][/db], rediss://... or unix:///path/to.sock"
#: What ``IDVCANCEL_BROKER_URL`` accepts.
BROKER_FORM = ("amqp://user:password@host[:port]/vhost (RabbitMQ; several nodes joined by"
               " ';'), amqps://..., or a Redis URL (redis://, rediss://)")
#: What a provider's base URL accepts.
HTTP_FORM = "http(s)://host[:port][/path]"


def masked(url: str) -> str:
    """``url`` with its password (each one, for ``;``-joined broker URLs) as ``***``.

    Examples:
        >>> masked("redis://:s3cret@cache:6379/0")
        'redis://:***@cache:6379/0'
        >>> masked("amqp://u:p1@h1//;amqp://u:p2@h2//")
        'amqp://u:***@h1//;amqp://u:***@h2//'
        >>> masked("notaurl")
        'notaurl'
    """
    return ";".join(_masked_one(part) for part in url.split(";"))


def _masked_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparseable: hide everything between '://' and the last '@'
        password = None
        parts = None
    if parts is None or not password:
        scheme, sep, rest = url.partition("://")
        if sep and "@" in rest:
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def check_redis_url(url: str) -> str:
    """The state store's URL, as redis-py parses it.

    Examples:
        >>> check_redis_url("redis://127.0.0.1:6379/0")
        'redis://127.0.0.1:6379/0'
        >>> check_redis_url("notaurl")
        Traceback (most recent call last):
        ...
        ValueError: not a Redis URL; expected redis://[:password@]host[:port][/db], ...
    """
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    except ValueError as exc:
        reason = "not a Redis URL" if "scheme" in str(exc) else str(exc)
        raise ValueError(f"{reason}; expected {REDIS_FORM}") from None
    return url


def check_broker_url(url: str) -> str:
    """The broker's URL ("" = the state store's Redis), as kombu parses it.

    Examples:
        >>> check_broker_url("amqp://u:p@h1:5672//;amqp://u:p@h2:5672//")
        'amqp://u:p@h1:5672//;amqp://u:p@h2:5672//'
        >>> check_broker_url("http://rabbit:15672/")
        Traceback (most recent call last):
        ...
        ValueError: 'http' is not a broker this worker speaks; expected amqp://...
    """
    from kombu.utils.url import parse_url

    for part in filter(None, url.split(";")):
        scheme = part.split("://", 1)[0].lower() if "://" in part else ""
        if scheme not in AMQP_SCHEMES | REDIS_SCHEMES:
            shown = f"{scheme!r} is not a broker" if scheme else "not a URL of a broker"
            raise ValueError(f"{shown} this worker speaks; expected {BROKER_FORM}")
        try:
            parse_url(part)
        except ValueError as exc:
            raise ValueError(f"{exc}; expected {BROKER_FORM}") from None
    return url


def check_http_url(url: str) -> str:
    """A provider's base URL: http or https, with a host.

    Examples:
        >>> check_http_url("https://api.gu1.ai")
        'https://api.gu1.ai'
        >>> check_http_url("api.gu1.ai")
        Traceback (most recent call last):
        ...
        ValueError: not an http(s) URL; expected http(s)://host[:port][/path]
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (a bad one raises)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {HTTP_FORM}") from None
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL; expected {HTTP_FORM}")
    return url
