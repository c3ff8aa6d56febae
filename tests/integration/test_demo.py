"""The README's first command: the demo runs the whole job and reaches every outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.contract import Outcome
from worker.local.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]


def test_demo_reaches_every_outcome_and_verifies_the_chain(tmp_path: Path) -> None:
    # Given a Redis of its own (the demo would otherwise look at 127.0.0.1:6379)
    with RedisServer(data_dir=tmp_path) as server:
        env = {**os.environ, "IDVCANCEL_REDIS_URL": server.url}
        # When the demo runs
        done = subprocess.run([sys.executable, "-m", "worker.ops.cli", "demo"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
    # Then it exits 0, every case as expected, all seven outcomes, the chain intact
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✗" not in done.stdout
    reached = next(line for line in done.stdout.splitlines()
                   if line.startswith("outcomes reached"))
    assert all(o.value in reached for o in Outcome)
    assert "intact" in done.stdout
