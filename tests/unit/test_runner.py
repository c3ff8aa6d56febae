"""``worker.runner``: the command line a worker's other processes get, and the private
directory its metrics are counted in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.local.procs import REPO_ROOT
from worker.runner.siblings import is_worker_command, sibling_command, sibling_name

CELERY = "/venv/bin/celery"


@pytest.mark.parametrize(("argv", "kept"), [
    # Given the plain command: the same, with the sibling's node name
    ([CELERY, "-A", "worker.app", "worker"], ["-A", "worker.app", "worker"]),
    # Given options each process needs (queues, log level, concurrency): kept
    ([CELERY, "-A", "worker.app", "worker", "-Q", "idvcancel", "-l", "INFO", "-c", "64"],
     ["-A", "worker.app", "worker", "-Q", "idvcancel", "-l", "INFO", "-c", "64"]),
    # Given what only one process may do, in each spelling: left out
    ([CELERY, "--workdir", "/srv", "-A", "worker.app", "worker", "-B", "-n", "w1@%h",
      "--pidfile=/run/w.pid", "-S", "/var/state.db", "-s", "/var/beat", "--detach",
      "-nw2@h", "--hostname", "w3@h", "--beat"],
     ["-A", "worker.app", "worker"]),
])
def test_a_sibling_runs_the_first_process_command_line_minus_one_process_options(
        argv: list[str], kept: list[str]) -> None:
    # When the command line of sibling 2 is made from the first process's
    command = sibling_command(argv, "celery-2@host")
    # Then it is python -m celery with the kept arguments and its own node name
    assert command == [sys.executable, "-m", "celery", *kept, "-n", "celery-2@host"]


def test_a_sibling_is_named_after_the_first_process() -> None:
    assert sibling_name("celery@vm", 2) == "celery-2@vm"
    assert sibling_name("bench0-1a2b@vm", 3) == "bench0-1a2b-3@vm"
    assert sibling_name("solo", 2) == "solo-2"


@pytest.mark.parametrize(("argv", "expected"), [
    ([CELERY, "-A", "worker.app", "worker"], True),
    (["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "x", "worker"], True),
    ([CELERY, "-A", "worker.app", "beat"], False),
    (["/venv/bin/pytest", "tests/", "-k", "worker"], False),
    ([], False),
])
def test_only_a_celery_worker_command_line_starts_siblings(argv: list[str],
                                                            expected: bool) -> None:
    assert is_worker_command(argv) is expected


def _count_once(env: dict[str, str]) -> tuple[str, str, list[str]]:
    """In a new process: prepare metrics, count one, and say where and in which files."""
    code = ("from worker.runner.metrics_files import use_metrics_files\n"
            "path = use_metrics_files()\n"
            "from prometheus_client import Counter\n"
            "Counter('probe', 'probe').inc()\n"
            "import json, os\n"
            "print(json.dumps([path, str(os.getpid()), sorted(os.listdir(path))]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    path, pid, files = json.loads(proc.stdout)
    return path, pid, files


def test_a_private_metrics_directory_is_made_for_the_process_and_removed_at_exit() -> None:
    """Given no PROMETHEUS_MULTIPROC_DIR
    When a worker process prepares its metrics before prometheus_client is imported
    Then it counts into its own file in a new directory, which is gone once it exits."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    path, pid, files = _count_once(env)
    assert files == [f"counter_{pid}.db"]
    assert not Path(path).exists()


def test_a_metrics_directory_given_by_the_user_is_used_and_kept(tmp_path: Path) -> None:
    """Given PROMETHEUS_MULTIPROC_DIR set by the user
    When a worker process counts
    Then its file is in that directory, which stays after it exits."""
    path, pid, _ = _count_once({**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert Path(path) == tmp_path
    assert (tmp_path / f"counter_{pid}.db").exists()
