"""Where the demo runs, so that it touches nothing it did not start.

* ``IDVCANCEL_REDIS_URL`` unset: an embedded ``redis-server`` on a free loopback port, its
  files in the demo's folder, stopped and removed afterwards. A Redis that happens to
  answer at 127.0.0.1:6379 is never used.
* ``IDVCANCEL_REDIS_URL`` set: a database of the demo's own on that server - the
  highest-numbered empty one (never db 0), or the one given (``--db N``, which may hold
  other applications' keys but none of ours) - claimed with ``keys.DEMO_RUN``. When the
  demo ends, every key it wrote there is deleted (with ``keep``: kept, and named).
* ``IDVCANCEL_BROKER_URL`` set: a Redis broker gets a database of the demo's own the same
  way; RabbitMQ carries the demo's messages through its queue ``idvcancel``.

Everything is checked before anything starts: what cannot be used is one
:class:`~worker.errors.DemoError` naming the URL (password masked), within seconds. The
worker logs (and the embedded Redis's files, and an audit archive, if any) go to one
temporary folder, removed when the demo succeeds, kept and named when it does not.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import redis
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from config.broker import is_amqp
from worker import keys
from worker.errors import DemoError, RedisServerError
from worker.local.redis_server import RedisServer
from worker.redis_client import probe_client

#: Every key the demo's workers and producer write starts with one of these: ours
#: (``idvcancel:*``, the queue ``idvcancel``) and kombu's Redis transport's
#: (``_kombu.binding*``, ``unacked``, ``unacked_index``, ``unacked_mutex``).
DEMO_KEY_PATTERNS = ("idvcancel*", "_kombu.*", "unacked*")
#: Seconds to wait for a server named in the environment before saying it is out of reach.
REACH_TIMEOUT_S = 2.0
#: Databases assumed when the server will not say (``CONFIG GET`` disabled).
DEFAULT_DATABASES = 16


def masked(url: str) -> str:
    """``url`` with its password masked, for messages.

    Examples:
        >>> masked("redis://:s3cret@cache:6379/0")
        'redis://:**@cache:6379/0'
    """
    return str(maybe_sanitize_url(url))


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` (the path's number and a ``?db=`` replaced).

    Examples:
        >>> with_db("redis://:pw@cache:6379/0?socket_timeout=3&db=0", 15)
        'redis://:pw@cache:6379/15?socket_timeout=3'
    """
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))
    return parts._replace(path=f"/{db}", query=query).geturl()


def _reach(url: str, what: str) -> redis.Redis:
    """A client for ``url`` once it answered PING; DemoError in a couple of seconds if not."""
    try:
        client = probe_client(url)
        client.ping()
    except ValueError as exc:
        raise DemoError(f"{what} {masked(url)!r} is not a Redis URL: {exc}") from exc
    except (redis.RedisError, OSError) as exc:
        raise DemoError(f"cannot reach Redis at {masked(url)} ({what}): {exc}") from exc
    return client


def _reach_rabbitmq(url: str) -> None:
    try:
        with Connection(url, connect_timeout=REACH_TIMEOUT_S) as connection:
            # One try, no pause: kombu's connect() would wait 2 s and try again.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         interval_max=0)
    except Exception as exc:
        raise DemoError(f"cannot reach RabbitMQ at {masked(url)} (IDVCANCEL_BROKER_URL): "
                        f"{type(exc).__name__}: {exc}") from exc


def _holds_demo_keys(client: redis.Redis) -> bool:
    return any(next(client.scan_iter(match=p, count=1000), None) is not None
               for p in DEMO_KEY_PATTERNS)


@dataclass
class DemoDatabase:
    """One database on a server named in the environment, claimed for this demo run."""

    url: str  #: the server's URL as given
    setting: str  #: the environment variable that gave it
    db: int
    client: redis.Redis

    @property
    def demo_url(self) -> str:
        return with_db(self.url, self.db)

    @classmethod
    def claim(cls, url: str, setting: str, run: str, db: int | None) -> DemoDatabase:
        """Database ``db``, else the highest-numbered empty one, claimed with a key
        (``SET NX``: two demos at once never share one). DemoError when none will do."""
        server = _reach(url, setting)
        try:
            candidates = [db] if db is not None else _empty_databases(server)
        finally:
            server.close()
        for number in candidates:
            client = probe_client(with_db(url, number))
            try:
                claimed = (not _holds_demo_keys(client)
                           and bool(client.set(keys.DEMO_RUN, run, nx=True)))
            except (redis.RedisError, OSError) as exc:  # e.g. "DB index is out of range"
                client.close()
                raise DemoError(f"cannot use database {number} of {masked(url)} ({setting}): "
                                f"{exc}") from exc
            if claimed:
                return cls(url, setting, number, client)
            client.close()
        if db is not None:
            raise DemoError(f"database {db} of {masked(url)} ({setting}) holds idvcancel keys "
                            "(a deployment, or a demo run kept with --keep): give another "
                            "--db, or delete them")
        raise DemoError(f"no empty database on {masked(url)} ({setting}) for the demo, which "
                        "uses one of its own and leaves the others alone: give --db N")

    def remove_demo_keys(self) -> int:
        """Delete every key the demo wrote here; returns how many."""
        removed = 0
        for pattern in DEMO_KEY_PATTERNS:
            found = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(found), 1000):
                removed += int(self.client.unlink(*found[start:start + 1000]))
        return removed


def _empty_databases(server: redis.Redis) -> list[int]:
    """The server's empty databases but db 0, highest number first."""
    try:
        count = int(server.config_get("databases").get("databases") or DEFAULT_DATABASES)
    except redis.ResponseError:  # a managed Redis may refuse CONFIG
        count = DEFAULT_DATABASES
    used = set(server.info("keyspace"))
    return [n for n in range(count - 1, 0, -1) if f"db{n}" not in used]


@dataclass
class DemoSite:
    """The demo's Redis, broker and folder. Use it as a context manager: on exit the
    embedded Redis is stopped, the demo's keys are deleted (unless ``keep``), and the
    folder is removed when ``succeeded`` was set (else kept and named in ``farewell``)."""

    redis_url: str
    broker_url: str  #: "" = the broker is the state store's Redis
    workdir: Path
    keep: bool = False
    #: What the demo says about where it runs, before it starts.
    lines: list[str] = field(default_factory=list)
    #: What it says as it ends: what was removed or kept, and where.
    farewell: list[str] = field(default_factory=list)
    succeeded: bool = False
    embedded: RedisServer | None = None
    databases: list[DemoDatabase] = field(default_factory=list)

    @classmethod
    def open(cls, environ: Mapping[str, str], *, db: int | None = None,
             keep: bool = False) -> DemoSite:
        """Check and claim everything the demo needs, or raise DemoError (leaving nothing
        behind but a log it names). ``environ`` gives ``IDVCANCEL_REDIS_URL`` and
        ``IDVCANCEL_BROKER_URL``."""
        given_redis = environ.get("IDVCANCEL_REDIS_URL", "")
        given_broker = environ.get("IDVCANCEL_BROKER_URL", "")
        if not given_redis and (db is not None or keep):
            raise ValueError("db and keep are for a Redis named in IDVCANCEL_REDIS_URL")
        site = cls("", "", Path(tempfile.mkdtemp(prefix="idvcancel-demo-")), keep)
        try:
            broker_line = site._open_broker(given_broker, given_redis)
            site.lines = [site._open_redis(given_redis, db), *broker_line]
        except BaseException:
            # Nothing ran, so nothing to inspect, unless the embedded Redis left a log.
            site.succeeded = not site.log_path("redis/redis").exists()
            site.close()
            raise
        return site

    def _open_broker(self, given_broker: str, given_redis: str) -> list[str]:
        if not given_broker or given_broker == given_redis:
            return []
        if is_amqp(given_broker):
            _reach_rabbitmq(given_broker)
            self.broker_url = given_broker
            return [f"broker: RabbitMQ at {masked(given_broker)} (IDVCANCEL_BROKER_URL); the "
                    "demo's messages pass through its queue idvcancel"]
        broker = self._claim(given_broker, "IDVCANCEL_BROKER_URL", None)
        self.broker_url = broker.demo_url
        return [f"broker: {self._describe(broker)}"]

    def _open_redis(self, given_redis: str, db: int | None) -> str:
        if given_redis:
            state = self._claim(given_redis, "IDVCANCEL_REDIS_URL", db)
            self.redis_url = state.demo_url
            return f"redis: {self._describe(state)}"
        server = RedisServer(data_dir=self.workdir / "redis")
        try:
            server.start()
        except RedisServerError as exc:
            raise DemoError(f"the demo's own Redis did not start: {str(exc).splitlines()[0]} "
                            f"(its log: {server.log_path})") from exc
        self.embedded = server
        self.redis_url = server.url
        return f"redis: {server.url}, the demo's own (started now, removed when it ends)"

    def _claim(self, url: str, setting: str, db: int | None) -> DemoDatabase:
        database = DemoDatabase.claim(url, setting, uuid.uuid4().hex, db)
        self.databases.append(database)
        return database

    def _describe(self, database: DemoDatabase) -> str:
        then = "kept when it ends (--keep)" if self.keep else "deleted when it ends"
        return (f"{masked(database.demo_url)}, database {database.db} of the server in "
                f"{database.setting}, the demo's own: its keys are {then}")

    def worker_env(self) -> dict[str, str]:
        """The settings that point a worker at this site (and its files into the folder)."""
        return {"IDVCANCEL_REDIS_URL": self.redis_url, "IDVCANCEL_BROKER_URL": self.broker_url,
                "IDVCANCEL_AUDIT_ARCHIVE_DIR": str(self.workdir / "audit-archive")}

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def close(self) -> None:
        """Stop, delete and remove what the demo started and wrote (see the class)."""
        removed: list[str] = []
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
            removed.append("the demo's Redis")
        for database in self.databases:
            where = f"database {database.db} ({masked(database.demo_url)})"
            try:
                if self.keep:
                    self.farewell.append(f"kept the demo's keys in {where}")
                else:
                    removed.append(f"{database.remove_demo_keys()} keys in {where}")
            except (redis.RedisError, OSError) as exc:
                self.farewell.append(f"could not delete the demo's keys in {where}: {exc}")
            finally:
                database.client.close()
        self.databases = []
        if self.succeeded and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
            removed.append("the logs")
        else:
            self.farewell.append(f"logs kept in {self.workdir}")
        if removed:
            self.farewell.insert(0, "removed: " + ", ".join(removed))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.succeeded = False
        self.close()
