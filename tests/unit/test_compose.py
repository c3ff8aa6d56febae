"""``docker-compose.yml``: the stack a person starts with ``docker compose up``.

Validated by ``docker compose config`` (v2, or the distribution's ``docker-compose`` v1:
.ci/run installs it, and ``tests.tools`` fails the test where CI lacks it), and read with
PyYAML where it is importable: the services are there, and Redis is configured the way
the README asks (append-only persistence, ``noeviction``: an evicted kombu key loses
messages)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.tools import compose_client

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
#: The logins compose asks the environment for (``${NAME:?...}`` in the file).
LOGINS = {"FLOWER_BASIC_AUTH": "operator:flower-secret",
          "GRAFANA_ADMIN_PASSWORD": "grafana-secret"}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``<client> -f docker-compose.yml config --quiet`` with ``env`` as the whole
    environment besides PATH and HOME (no login leaks in from the caller's shell)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([*compose_client(), "-f", str(COMPOSE_FILE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**base, **env})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_docker_compose_config_accepts_the_file() -> None:
    """Given the logins in the environment, when compose itself parses and resolves the
    file, then it has no complaint."""
    proc = compose_config(LOGINS)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("login", sorted(LOGINS))
def test_docker_compose_refuses_to_start_without_a_login(login: str) -> None:
    """Given one login missing from the environment, when compose resolves the file,
    then it refuses, naming the variable to set (rather than run Flower or Grafana open)."""
    proc = compose_config({k: v for k, v in LOGINS.items() if k != login})
    assert proc.returncode != 0
    assert login in proc.stderr, proc.stderr


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert {"rabbitmq", "redis", "worker", "beat", "flower", "simulator", "prometheus",
            "grafana"} <= set(compose["services"])


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


def test_prometheus_and_grafana_are_provisioned_from_deploy(compose: dict[str, Any]) -> None:
    """Given the prometheus and grafana services, then they mount the rules, the scrape
    configuration and the dashboard from deploy/ (files that exist), the worker serves
    /metrics on the port Prometheus scrapes, and Grafana's password is not in the file."""
    services = compose["services"]
    root = COMPOSE_FILE.parent
    mounts = {volume.split(":")[0]: volume.split(":")[1]
              for name in ("prometheus", "grafana") for volume in services[name]["volumes"]
              if volume.startswith("./")}
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert (root / "deploy/prometheus/prometheus.yml").is_file()
    assert (root / "deploy/prometheus/alerts.yml").is_file()
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (root / "deploy/grafana/dashboards/idvcancel.json").is_file()
    provider = (root / "deploy/grafana/provisioning/dashboards/idvcancel.yml").read_text()
    assert f"path: {mounts['./deploy/grafana/dashboards']}" in provider
    scrape = (root / "deploy/prometheus/prometheus.yml").read_text()
    port = services["worker"]["environment"]["IDVCANCEL_METRICS_PORT"]
    assert f"port: {port}" in scrape
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password
