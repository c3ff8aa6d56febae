"""``worker.app`` builds the Celery app and nothing more: a bad ``IDVCANCEL_*`` value does
not break importing it (tasks, tools and tests import it), and the worker started with
the contract's own command stops at once with one line naming the variable, what it got
and what it accepts - not a traceback, and never a secret's value."""

from __future__ import annotations

import os
import subprocess
import sys

from worker.local.procs import REPO_ROOT


def run(code_or_args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_importing_the_app_with_a_bad_setting_still_works() -> None:
    # Given a bad setting in the environment
    # When the app module is imported
    proc = run(["-c", "import worker.app, tasks.process; print(worker.app.app.main)"],
               IDVCANCEL_RETRY_MAX_ATTEMPTS="abc")
    # Then the import succeeds
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "idvcancel"


def test_a_worker_with_a_bad_setting_exits_2_with_one_line_naming_it() -> None:
    # Given a bad setting
    # When the worker is started with the contract's own command
    proc = run(["-m", "celery", "-A", "worker.app", "worker"],
               IDVCANCEL_RETRY_MAX_ATTEMPTS="abc")
    # Then it exits 2, saying which variable, what it got and what it accepts
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("idvcancel: error:")]
    assert line == ["idvcancel: error: IDVCANCEL_RETRY_MAX_ATTEMPTS='abc': Input should be a "
                    "valid integer, unable to parse string as an integer"]


def test_a_refused_secret_is_never_echoed() -> None:
    # Given a refused combination of settings while a credential is set
    proc = run(["-m", "celery", "-A", "worker.app", "worker"],
               IDVCANCEL_LEASE_SECONDS="1", IDVCANCEL_HTTP_TIMEOUT_SECONDS="5",
               IDVCANCEL_IDPASS_TOKEN="tok-s3cret-value")
    # When the worker is started
    # Then the rule is named in one line, and the credential appears nowhere
    assert proc.returncode == 2
    assert "IDVCANCEL_LEASE_SECONDS (1) must exceed IDVCANCEL_HTTP_TIMEOUT_SECONDS" in (
        proc.stderr)
    assert "tok-s3cret-value" not in proc.stderr + proc.stdout
