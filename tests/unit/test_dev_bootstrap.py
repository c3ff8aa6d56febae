"""``dev.py`` on a machine without a network: pip (the real one) pointed at a package
index that does not answer ends dev.py, exit 1, with two lines saying what pip failed to
install and what to check - not a ``CalledProcessError`` traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from worker.local.procs import REPO_ROOT


def offline_env() -> dict[str, str]:
    """The environment with pip's index on a closed loopback port and nothing else to
    install from (no local wheel directory, no config file, no proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kept = {k: v for k, v in os.environ.items()
            if not k.upper().startswith("PIP_") and "PROXY" not in k.upper()}
    return {**kept, "PIP_INDEX_URL": f"http://127.0.0.1:{port}/", "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "1", "PIP_CONFIG_FILE": os.devnull}


def run_dev(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"import dev\n{code}"], cwd=REPO_ROOT,
                          env=offline_env(), capture_output=True, text=True, timeout=300,
                          check=False)


def assert_says_what_failed_and_what_to_do(proc: subprocess.CompletedProcess[str],
                                           what: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "CalledProcessError" not in proc.stderr
    *_, failed, todo = proc.stderr.strip().splitlines()
    assert failed.startswith(f"dev.py: error: pip could not install {what} (pip install ")
    assert todo.startswith("dev.py: check the network, a proxy (HTTPS_PROXY)")
    assert "PIP_INDEX_URL" in todo


def test_pip_without_an_index_says_what_failed_and_what_to_do() -> None:
    # Given pip pointed at an index that does not answer
    # When dev.py installs a package through it (a dry run: nothing would be installed)
    proc = run_dev("from pathlib import Path; import sys\n"
                   "dev.pip_install(Path(sys.executable), 'the test package',"
                   " '--dry-run', '--no-deps', 'idv-cancel-offline-check')")
    # Then it exits 1 with the two lines, after pip's own reason
    assert_says_what_failed_and_what_to_do(proc, "the test package")
    assert "No matching distribution" in proc.stderr


@pytest.mark.slow
def test_a_fresh_checkout_without_a_network_says_what_failed(tmp_path: Path) -> None:
    # Given a fresh virtual environment directory and no package index
    venv = tmp_path / "venv"
    # When dev.py sets it up (what `python3 dev.py lint` does first)
    proc = run_dev(f"from pathlib import Path\ndev.ensure_env(Path({str(venv)!r}))")
    # Then it stops at installing the project, saying so and what to check, and a later
    # run installs again (no stamp was written)
    assert_says_what_failed_and_what_to_do(proc, "idv-cancel and its dependencies")
    assert not (venv / ".installed-from").exists()
