"""The README's first command: the demo runs the whole job, reaches every outcome, and
touches nothing it did not start (its own Redis, or its own database on the Redis it is
given, deleted afterwards; its logs in a folder it removes).

Every test runs the real ``idvcancel demo`` in a subprocess with a private ``TMPDIR``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.contract import Outcome
from worker.local.redis_server import RedisServer, redis_ping

REPO = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str, timeout: float = 240,
          **env: str) -> subprocess.CompletedProcess[str]:
    """``idvcancel demo ARGS`` with only the given IDVCANCEL_REDIS_URL / _BROKER_URL (the
    caller's are dropped) and ``tmp_path/tmp`` as its temporary folder."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items()
            if k not in {"IDVCANCEL_REDIS_URL", "IDVCANCEL_BROKER_URL"}}
    return subprocess.run([sys.executable, "-m", "worker.ops.cli", "demo", *args], cwd=REPO,
                          env={**base, "TMPDIR": str(tmpdir), **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _assert_every_outcome(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✗" not in done.stdout
    reached = next(line for line in done.stdout.splitlines()
                   if line.startswith("outcomes reached"))
    assert all(o.value in reached for o in Outcome)
    assert "intact" in done.stdout


def _line(done: subprocess.CompletedProcess[str], start: str) -> str:
    return next(line for line in done.stdout.splitlines() if line.startswith(start))


def _contents(client: redis.Redis) -> dict[str, Any]:
    """Every key of the client's database with its type and value."""
    dump: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        dump[key] = (kind, client.dump(key))
    return dump


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own holding another application's keys in db 0 and db 15."""
    with RedisServer(data_dir=tmp_path / "bystander") as server:
        client = server.client(decode_responses=True)
        client.set("shop:user:1", "alice")
        client.rpush("idvcancel", "not a message")  # a list named like our queue, in db 0
        client.hset("shop:cart:1", mapping={"apples": 3})
        redis.Redis.from_url(server.url.replace("/0", "/15")).set("other:app", "x")
        client.close()
        yield server


def test_demo_without_a_url_runs_on_a_redis_of_its_own_and_leaves_nothing(
        tmp_path: Path) -> None:
    """Given no IDVCANCEL_REDIS_URL and another Redis running on this machine,
    When the demo runs,
    Then it reaches every outcome on a Redis it started itself, which is gone afterwards,
    the other Redis had no connection from it, and its temporary folder is left empty."""
    with RedisServer(data_dir=tmp_path / "other") as other:
        watcher = other.client()
        connections_before = watcher.info("stats")["total_connections_received"]
        done = _demo(tmp_path)
        connections_after = watcher.info("stats")["total_connections_received"]
        watcher.close()
    _assert_every_outcome(done)
    redis_line = _line(done, "redis:")
    assert "the demo's own" in redis_line
    used = re.search(r"redis://127\.0\.0\.1:(\d+)/0", redis_line)
    assert used is not None and int(used.group(1)) not in {other.port, 6379}
    assert not redis_ping(used.group(0))  # stopped
    assert connections_after == connections_before
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_with_a_url_uses_a_database_of_its_own_and_deletes_its_keys(
        tmp_path: Path, bystander: RedisServer) -> None:
    """Given IDVCANCEL_REDIS_URL names a Redis whose db 0 and db 15 hold another
    application's keys,
    When the demo runs,
    Then it says it uses db 14 (the highest-numbered empty one), reaches every outcome,
    and afterwards db 0 and db 15 are as they were and no other database holds a key."""
    db0 = bystander.client()
    db15 = redis.Redis.from_url(bystander.url.replace("/0", "/15"))
    before = (_contents(db0), _contents(db15))
    done = _demo(tmp_path, IDVCANCEL_REDIS_URL=bystander.url)
    _assert_every_outcome(done)
    assert "database 14 " in _line(done, "redis:")
    assert "deleted when it ends" in _line(done, "redis:")
    assert (_contents(db0), _contents(db15)) == before
    assert set(db0.info("keyspace")) == {"db0", "db15"}
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_with_keep_leaves_its_keys_in_its_database_and_says_which(
        tmp_path: Path, bystander: RedisServer) -> None:
    """Given the same Redis,
    When the demo runs with --keep,
    Then db 0 is as it was, the demo's results are still in db 14, and the demo says so."""
    db0 = bystander.client()
    before = _contents(db0)
    done = _demo(tmp_path, "--keep", IDVCANCEL_REDIS_URL=bystander.url)
    _assert_every_outcome(done)
    assert "kept the demo's keys in database 14" in done.stdout
    assert _contents(db0) == before
    kept = redis.Redis.from_url(bystander.url.replace("/0", "/14"))
    assert kept.xlen("idvcancel:results") == len(
        [line for line in done.stdout.splitlines() if " ✓ " in line])
    # and a second run does not reuse that database
    refused = _demo(tmp_path, "--db", "14", timeout=30, IDVCANCEL_REDIS_URL=bystander.url)
    assert refused.returncode == 1
    assert refused.stderr.startswith("idvcancel: error: database 14 of ")
    assert "holds idvcancel keys" in refused.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_demo_with_an_unreachable_redis_says_so_in_one_line_at_once(tmp_path: Path) -> None:
    """Given IDVCANCEL_REDIS_URL names a closed loopback port (with a password),
    When the demo runs,
    Then within seconds it exits 1 with one error line naming the URL, password masked,
    without a traceback, and leaves nothing in its temporary folder."""
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    done = _demo(tmp_path, timeout=30, IDVCANCEL_REDIS_URL=url)
    took = time.monotonic() - started
    assert done.returncode == 1
    assert took < 10
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("idvcancel: error: cannot reach Redis at redis://:**@")
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_whose_worker_cannot_start_names_the_worker_log(tmp_path: Path) -> None:
    """Given a setting that stops every worker at start (a breaker threshold of 0),
    When the demo runs,
    Then it exits 1 with one error line that names the setting and the worker's log,
    which is kept, and no traceback."""
    done = _demo(tmp_path, timeout=60, IDVCANCEL_BREAKER_FAILURE_THRESHOLD="0")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("idvcancel: error: worker demo0 exited with code")
    assert "IDVCANCEL_BREAKER_FAILURE_THRESHOLD" in done.stderr
    log = Path(done.stderr.rsplit("its log: ", 1)[1].strip())
    assert log.is_relative_to(tmp_path / "tmp") and log.is_file()


def test_demo_with_a_rabbitmq_broker_sends_its_messages_through_it(
        tmp_path: Path, rabbit_url: str) -> None:
    """Given IDVCANCEL_BROKER_URL names a RabbitMQ (a vhost of the test's own),
    When the demo runs,
    Then it says its messages pass through RabbitMQ, reaches every outcome, and leaves
    nothing in its temporary folder."""
    done = _demo(tmp_path, IDVCANCEL_BROKER_URL=rabbit_url)
    _assert_every_outcome(done)
    assert _line(done, "broker:").startswith("broker: RabbitMQ at amqp://guest:**@")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_demo_keep_without_a_url_is_bad_usage(tmp_path: Path) -> None:
    """Given no IDVCANCEL_REDIS_URL (the demo's Redis is its own and removed),
    When the demo is asked to --keep its keys,
    Then it refuses in one line with exit 2 and starts nothing."""
    done = _demo(tmp_path, "--keep", timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("idvcancel: error: --db and --keep are for a Redis named in")
    assert done.stderr.count("\n") == 1
    assert list((tmp_path / "tmp").iterdir()) == []
