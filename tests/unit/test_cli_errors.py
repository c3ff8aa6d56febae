"""What a script and a person get from ``idvcancel`` when the environment is wrong: the
real entry point, run as a subprocess, answers a bad setting with exit 2 and an
unreachable Redis or RabbitMQ with exit 1 - each as exactly one line on stderr starting
``idvcancel: error:``, no traceback, and an unreachable service at once (a probe of at
most a second, not the clients' retries and 10 s timeouts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.settings import describe_settings_error
from worker.local.procs import REPO_ROOT

IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))

SUBMIT = ["submit", "--request-id", "r-1", "--provider", "idpass", "--action", "cancel",
          "--reference", "fe4291ca-d831-4760-96df-c9cb03b3cd95", "--requested-by", "ops"]
#: A few commands of each kind (they all reach the settings and Redis the same way).
SETTINGS_COMMANDS = [["status", "r-1"], SUBMIT, ["dlq", "list"]]
REDIS_COMMANDS = [["status", "r-1"], SUBMIT, ["results"], ["attention", "list"]]
BAD_SETTINGS = {
    "bad URL": ("IDVCANCEL_REDIS_URL", "notaurl", "not a Redis URL; expected redis://"),
    "bad JSON": ("IDVCANCEL_RATE_LIMITS", "{bad", "not JSON"),
    "bad int": ("IDVCANCEL_RETRY_MAX_ATTEMPTS", "abc", "Input should be a valid integer"),
}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``idvcancel ARGS`` with only ``env`` of the IDVCANCEL_* variables; and how long."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDVCANCEL_")}
    started = time.monotonic()
    proc = subprocess.run([IDVCANCEL, *args], env={**clean, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    return proc, time.monotonic() - started


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("idvcancel: error: "), proc.stderr
    return lines[0].removeprefix("idvcancel: error: ")


def name(command: list[str]) -> str:
    return " ".join(command[:2])


@pytest.mark.parametrize("case", BAD_SETTINGS)
@pytest.mark.parametrize("command", SETTINGS_COMMANDS, ids=name)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(command: list[str], case: str) -> None:
    # Given a bad setting
    variable, value, accepts = BAD_SETTINGS[case]
    # When a command is run
    proc, _ = run_cli(*command, **{variable: value})
    # Then it exits 2 with one line naming the variable, the value and what it accepts
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert line.startswith(f"{variable}={value!r}: ")
    assert accepts in line


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=name)
def test_an_unreachable_redis_is_one_line_at_once_and_exit_1(command: list[str]) -> None:
    # Given a Redis URL (with a password) on a loopback port nothing listens on
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    # When a command is run
    proc, took = run_cli(*command, IDVCANCEL_REDIS_URL=url)
    # Then it exits 1 at once, with one line naming Redis and where, password masked
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert line.startswith(f"cannot reach Redis at {url.replace('s3cret', '***')}"
                           " (IDVCANCEL_REDIS_URL): "), line
    assert "s3cret" not in proc.stderr + proc.stdout
    assert took < 10, f"took {took:.1f} s"  # a probe of 1 s; the client's retries took 5+


def test_a_redis_that_accepts_but_never_answers_is_one_line_at_once() -> None:
    # Given a port that accepts connections and never answers (a hung server)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        # When a command is run
        proc, took = run_cli("status", "r-1", IDVCANCEL_REDIS_URL=url)
    # Then it says so in one line and exits 1, without waiting out the client's timeouts
    assert proc.returncode == 1, proc.stderr
    assert one_error_line(proc).startswith(f"cannot reach Redis at {url} (IDVCANCEL_REDIS_URL):")
    assert took < 10, f"took {took:.1f} s"  # 0.5 s + 0.5 s; before, over 5 minutes


def test_an_unreachable_rabbitmq_is_one_line_at_once_and_exit_1(redis_url: str) -> None:
    # Given a reachable Redis and a RabbitMQ URL on a loopback port nothing listens on
    url = f"amqp://ops:s3cret@127.0.0.1:{closed_port()}//"
    # When a request is submitted
    proc, took = run_cli(*SUBMIT, IDVCANCEL_REDIS_URL=redis_url, IDVCANCEL_BROKER_URL=url)
    # Then it exits 1 at once, naming RabbitMQ, password masked
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert line.startswith(f"cannot reach RabbitMQ at {url.replace('s3cret', '***')}"
                           " (IDVCANCEL_BROKER_URL): "), line
    assert "s3cret" not in proc.stderr + proc.stdout
    assert took < 10, f"took {took:.1f} s"


def test_schema_needs_neither_good_settings_nor_redis() -> None:
    # Given bad settings and no Redis
    proc, _ = run_cli("schema", IDVCANCEL_REDIS_URL="notaurl", IDVCANCEL_RATE_LIMITS="{bad")
    # Then the contract is printed all the same
    assert proc.returncode == 0, proc.stderr
    assert '"idvcancel.process"' in proc.stdout


def test_the_command_line_and_the_worker_say_the_same_line() -> None:
    # Given one bad setting
    env = {"IDVCANCEL_RATE_LIMITS": '{"txcloud": "fast"}'}
    # When a command and the worker (the contract's own command) are started with it
    command, _ = run_cli("dlq", "list", **env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDVCANCEL_")}
    worker = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker"],
                            env={**clean, **env}, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    # Then both exit 2 with the same line, settings' own description of the error
    assert (command.returncode, worker.returncode) == (2, 2)
    said = [ln for ln in worker.stderr.splitlines() if ln.startswith("idvcancel: error:")]
    assert said == [f"idvcancel: error: {one_error_line(command)}"]
    assert one_error_line(command) == expected_description(env)


def expected_description(env: dict[str, str]) -> str:
    from pydantic import ValidationError

    from config.settings import Settings

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            Settings()
        except ValidationError as exc:
            return describe_settings_error(exc)
    raise AssertionError(f"{env} was accepted")
