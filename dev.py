#!/usr/bin/env python3
"""Bootstrap for a fresh machine that has only Python 3.11+.

    python3 dev.py demo    # create .venv, install, run the whole job end to end
    python3 dev.py test    # create .venv, install, run the whole test suite (doctests too)
    python3 dev.py lint    # create .venv, install, run ruff and mypy --strict

Each creates ``.venv`` beside this file on first use and reuses it afterwards.
Any further arguments are passed on (``python3 dev.py test -m 'not slow'``).
Without a network (or with a proxy or index pip cannot use) it ends, exit 1, with two
lines saying what pip failed to install and what to check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv as venv_module
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


#: What to do when pip cannot reach its index, said after what failed.
NETWORK_HINT = ("check the network, a proxy (HTTPS_PROXY) or the package index"
                " (PIP_INDEX_URL, PIP_FIND_LINKS), then run dev.py again")


def pip_install(python: Path, what: str, *args: str) -> None:
    """``python -m pip install ARGS``; if pip fails, end dev.py with two lines saying what
    failed and what to do (pip's own message, printed above them, says why)."""
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"dev.py: error: pip could not install {what} (pip install {' '.join(args)}"
                 f" exited {exc.returncode})\ndev.py: {NETWORK_HINT}")


def ensure_env(venv: Path = VENV) -> None:
    """Create the virtual environment ``venv`` and install the project with its dev
    extras into it (again whenever pyproject.toml changed)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 the user has
        sys.exit("idv-cancel needs Python 3.11 or newer")
    python = venv / BIN.name / "python"
    stamp = venv / STAMP.name
    if not python.exists():
        print(f"creating {venv.name} ...", flush=True)
        try:
            venv_module.EnvBuilder(with_pip=True).create(venv)
        except subprocess.CalledProcessError as exc:  # ensurepip failed
            shutil.rmtree(venv, ignore_errors=True)  # half made: start afresh next time
            sys.exit(f"dev.py: error: could not create {venv} with pip (ensurepip exited"
                     f" {exc.returncode})\ndev.py: on Debian or Ubuntu install python3-venv"
                     " (apt-get install python3-venv), then run dev.py again")
    wanted = (ROOT / "pyproject.toml").read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    print(f"installing idv-cancel and its dependencies into {venv.name} ...", flush=True)
    pip_install(python, "a current pip", "--upgrade", "pip")
    pip_install(python, "idv-cancel and its dependencies", "-e", f"{ROOT}[dev]")
    stamp.write_text(wanted)


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
