"""How long ``idvcancel`` takes to say that Redis does not answer (target: within 1 s).

    .venv/bin/python bench/cli_errors.py [--rounds 5]

Two ways Redis can be away, in interleaved rounds: a closed loopback port (refused at
once) and a port that accepts connections but never answers (a hung server or a
firewall that drops: the probe's 1 s timeout is what bounds it). Each is timed in this
process through click's runner (the command's own time, imports already done) and as a
fresh ``idvcancel dlq list`` process (what an operator waits, interpreter start-up
included; ``idvcancel schema``, which needs no Redis, is that start-up's baseline).
Not a test: numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGET_SECONDS = 1.0
IDVCANCEL = str(Path(sys.executable).with_name("idvcancel"))


@contextmanager
def away_redis() -> Iterator[dict[str, str]]:
    """Redis URLs for a refused port and for a silent one (listening, never answering)."""
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshake; nobody ever reads
        refused = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        closed.close()
        yield {"refused": refused, "silent": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"}


def in_process(url: str) -> tuple[float, int]:
    from click.testing import CliRunner

    from config.settings import get_settings
    from worker.ops.cli import main

    os.environ["IDVCANCEL_REDIS_URL"] = url
    get_settings.cache_clear()
    started = time.monotonic()
    result = CliRunner().invoke(main, ["dlq", "list"])
    return time.monotonic() - started, result.exit_code


def a_process(*args: str, url: str) -> float:
    started = time.monotonic()
    subprocess.run([IDVCANCEL, *args], env={**os.environ, "IDVCANCEL_REDIS_URL": url},
                   capture_output=True, check=False, timeout=120)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    figures: dict[str, list[float]] = {}
    with away_redis() as urls:
        in_process(urls["refused"])  # the first call imports the command's modules
        for _ in range(rounds):
            for case, url in urls.items():
                took, code = in_process(url)
                assert code == 1, f"{case}: exit {code}"
                figures.setdefault(f"{case}: the command", []).append(took)
                figures.setdefault(f"{case}: a fresh process", []).append(
                    a_process("dlq", "list", url=url))
            figures.setdefault("start-up (idvcancel schema)", []).append(
                a_process("schema", url=urls["refused"]))
    print(f"idvcancel dlq list with Redis away, median of {rounds} interleaved rounds")
    for name, values in figures.items():
        median = statistics.median(values)
        met = "ok" if median <= TARGET_SECONDS else "MISSED"
        verdict = f"target <= {TARGET_SECONDS:g} s: {met}" if name.endswith("the command") else ""
        print(f"  {name:32} {median:6.2f} s   {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
