#!/usr/bin/env python3
"""Bootstrap for a fresh machine that has only Python 3.11+.

    python3 dev.py demo    # create .venv, install, run the whole job end to end
    python3 dev.py test    # create .venv, install, run the whole test suite (doctests too)
    python3 dev.py lint    # create .venv, install, run ruff and mypy --strict

Both create ``.venv`` beside this file on first use and reuse it afterwards.
Any further arguments are passed on (``python3 dev.py test -m 'not slow'``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


def ensure_env() -> None:
    """Create the virtual environment and install the project with its dev extras."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 the user has
        sys.exit("idv-cancel needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = (ROOT / "pyproject.toml").read_text()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing idv-cancel and its dependencies into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"demo", "test", "lint"}:
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    ensure_env()
    os.chdir(ROOT)
    if command == "demo":
        argv = [str(BIN / "idvcancel"), "demo", *rest]
    elif command == "test":
        argv = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        argv = [str(BIN / "ruff"), "check", "."]
        code = subprocess.run(argv, check=False).returncode
        argv = [str(BIN / "mypy")]
        return code or subprocess.run(argv, check=False).returncode
    return subprocess.run(argv, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
