"""Shared fixtures.

Nothing here imports ``worker.app``: unit tests of single modules must run even while
the Celery app is being written. Integration tests get a Redis server that this test
session starts itself (never the machine's own 6379), flushed before every test; broker
tests get a private RabbitMQ node the same way (``tests/rabbit.py``, loaded below).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from tests.integration.harness import close_producers
from worker.local.redis_server import RedisServer

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

# rabbit_node / rabbit_url: a private RabbitMQ node for broker tests.
pytest_plugins = ["tests.rabbit"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under ``tests/integration/`` is marked ``integration``."""
    for item in items:
        if Path(item.path).resolve().is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server started by our own code on a free loopback port."""
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        close_producers()
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis, emptied (FLUSHALL) for this test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    """An in-memory fake with a private server: fast unit tests only."""
    client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    try:
        yield client
    finally:
        client.close()
