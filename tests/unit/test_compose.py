"""``docker-compose.yml``: the stack a person starts with ``docker compose up``.

Validated by ``docker compose config`` where that client exists, and read with PyYAML
where it is importable: the services are there, and Redis is configured the way the
README asks (append-only persistence, ``noeviction``: an evicted kombu key loses
messages)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose_client() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (v1), whichever answers."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True,
                               timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_docker_compose_config_accepts_the_file() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose client on this machine")
    # When compose itself parses and resolves the file
    proc = subprocess.run([*client, "-f", str(COMPOSE_FILE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=120, check=False)
    # Then it has no complaint
    assert proc.returncode == 0, proc.stderr


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert {"rabbitmq", "redis", "worker", "beat", "flower", "simulator"} <= set(
        compose["services"])


def test_redis_is_append_only_and_never_evicts(compose: dict[str, Any]) -> None:
    command = command_text(compose["services"]["redis"])
    assert re.search(r"--appendonly\s+yes\b", command), command
    assert re.search(r"--maxmemory-policy\s+noeviction\b", command), command


def test_worker_and_beat_use_the_compose_rabbitmq_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "beat"):
        # Given the anchors resolved, each points at the broker and the state store
        environment = services[name]["environment"]
        assert environment["IDVCANCEL_BROKER_URL"].startswith("amqp://"), name
        assert "@rabbitmq:5672" in environment["IDVCANCEL_BROKER_URL"], name
        assert environment["IDVCANCEL_REDIS_URL"].startswith("redis://redis:6379"), name
        # and waits for both
        assert {"rabbitmq", "redis"} <= set(services[name]["depends_on"]), name
    assert "@rabbitmq:5672" in command_text(services["flower"])


def test_rabbitmq_keeps_its_data_and_a_long_enough_consumer_timeout(
        compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    assert any(v.endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])
    match = re.search(r"consumer_timeout\s*=\s*(\d+)", command_text(rabbitmq))
    assert match is not None and int(match.group(1)) >= 30 * 60 * 1000


def test_worker_consumes_the_queue_and_beat_runs_our_app(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = command_text(services["worker"])
    assert worker.startswith("idvcancel worker") or "-Q idvcancel" in worker, worker
    beat = command_text(services["beat"])
    assert beat.startswith("idvcancel beat") or "-A worker.app beat" in beat, beat


def test_flower_asks_for_a_login_whose_password_is_not_in_the_file(
        compose: dict[str, Any]) -> None:
    # Given the Flower service
    command = command_text(compose["services"]["flower"])
    # Then it requires basic auth, taken from the environment (compose refuses to start
    # without it), never a password written in the file
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in command
