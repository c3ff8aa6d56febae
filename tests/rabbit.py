"""Pytest fixtures and helpers for tests that need a real RabbitMQ broker.

``rabbit_node`` is one private node per test session (:class:`RabbitNode`: its own name,
ports and files; the machine's broker is never used). ``rabbit_url`` gives each test a
fresh vhost on it, deleted afterwards, so no queue or message leaks into the next test
and no test has to know which queues to purge.

Where no ``rabbitmq-server`` is installed (and could not be: .ci/run installs it on CI)
the fixtures skip, naming the missing package. ``IDVCANCEL_REQUIRE_RABBITMQ=1``, which
.ci/run sets, turns that skip into a failure, so CI can never pass by skipping.

Loaded as a plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import amqp
import pytest

from worker.local.rabbitmq_node import RabbitNode, find_rabbitmq_server

__all__ = [
    "connect",
    "declare_quorum_queue",
    "drain",
    "publish_confirmed",
    "queue_depth",
    "rabbit_node",
    "rabbit_url",
    "require_rabbitmq",
    "wait_depth",
]

REQUIRE_ENV = "IDVCANCEL_REQUIRE_RABBITMQ"


def require_rabbitmq() -> None:
    """Skip the calling test (fail, under ``IDVCANCEL_REQUIRE_RABBITMQ=1``) when no
    ``rabbitmq-server`` is installed."""
    if find_rabbitmq_server() is not None:
        return
    reason = (
        "rabbitmq-server is not installed (looked in /usr/lib/rabbitmq/bin, PATH and the "
        "sbin directories); install the rabbitmq-server package, as .ci/run does"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} - and {REQUIRE_ENV}=1 says this run needs it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private RabbitMQ node for the whole session (about 5 s to start, once)."""
    require_rabbitmq()
    node = RabbitNode(data_dir=tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def rabbit_url(rabbit_node: RabbitNode) -> Iterator[str]:
    """AMQP URL of a vhost created for this test alone (guest has full rights on it).

    A node that an earlier test stopped or killed is started again first (same name,
    ports and data), so one crash test does not fail every test after it.
    """
    if not rabbit_node.is_running():
        rabbit_node.start()
    vhost = f"t-{secrets.token_hex(4)}"
    url = rabbit_node.add_vhost(vhost)
    try:
        yield url
    finally:
        if rabbit_node.is_running():  # a test may have stopped or killed the node
            rabbit_node.delete_vhost(vhost)


# -- py-amqp helpers (the same client library kombu's pyamqp transport uses) -----------


def connect(url: str, *, confirm_publish: bool = False) -> Any:
    """An open ``amqp.Connection`` to an ``amqp://user:pass@host:port/vhost`` URL."""
    from kombu.utils.url import url_to_parts

    _transport, host, port, user, password, vhost, _query = url_to_parts(url)
    conn = amqp.Connection(
        host=f"{host}:{port}",
        userid=user or "guest",
        password=password or "guest",
        virtual_host=vhost or "/",
        confirm_publish=confirm_publish,
        connect_timeout=5,
    )
    conn.connect()
    return conn


def declare_quorum_queue(url: str, name: str) -> None:
    """Declare a durable quorum queue (the kind that survives a ``kill -9`` of the node)."""
    conn = connect(url)
    try:
        conn.channel().queue_declare(
            name, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
    finally:
        conn.close()


def publish_confirmed(url: str, queue: str, bodies: Iterable[bytes]) -> None:
    """Publish persistent messages to ``queue``; each returns only once the broker has
    confirmed it, i.e. it is on disk."""
    conn = connect(url, confirm_publish=True)
    try:
        channel = conn.channel()
        for body in bodies:
            channel.basic_publish(
                amqp.Message(body, delivery_mode=2), exchange="", routing_key=queue
            )
    finally:
        conn.close()


def queue_depth(url: str, queue: str) -> int | None:
    """Ready messages in ``queue`` (a passive declare), None when it does not exist."""
    conn = connect(url)
    try:
        _name, count, _consumers = conn.channel().queue_declare(queue, passive=True)
        return int(count)
    except amqp.exceptions.NotFound:
        return None
    finally:
        conn.close()


def wait_depth(url: str, queue: str, expected: int, timeout: float = 30.0) -> int | None:
    """Poll :func:`queue_depth` until it is ``expected`` or ``timeout`` passes; return the
    last value (a quorum queue may still be electing its leader right after a boot)."""
    deadline = time.monotonic() + timeout
    while True:
        depth = queue_depth(url, queue)
        if depth == expected or time.monotonic() >= deadline:
            return depth
        time.sleep(0.2)


def drain(url: str, queue: str) -> list[bytes]:
    """Take (and acknowledge) every ready message in ``queue``, oldest first."""
    conn = connect(url)
    try:
        channel = conn.channel()
        bodies: list[bytes] = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            bodies.append(bytes(message.body))
        return bodies
    finally:
        conn.close()
