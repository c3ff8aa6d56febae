"""The distribution's command-line tools some tests drive: ``promtool`` (package
``prometheus``) and a compose client (``docker compose`` v2, or the ``docker-compose``
package, v1).

Where a tool is missing the test skips, naming the package. ``IDVCANCEL_REQUIRE_TOOLS=1``,
which .ci/run sets after installing them, turns that skip into a failure, so CI can never
pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REQUIRE_ENV = "IDVCANCEL_REQUIRE_TOOLS"


def _missing(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} - and {REQUIRE_ENV}=1 says this run needs it")
    pytest.skip(reason)


def promtool() -> str:
    """The path of ``promtool`` (skip or fail when it is not installed)."""
    found = shutil.which("promtool")
    if found is None:
        _missing("promtool is not on PATH; install the prometheus package, as .ci/run does")
    assert found is not None
    return found


def compose_client() -> list[str]:
    """``docker compose`` (v2) or ``docker-compose`` (v1), whichever answers (skip or
    fail when neither does)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True,
                               timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        _missing("no docker compose client; install the docker-compose package, as "
                 ".ci/run does")
    assert legacy is not None
    return [legacy]
