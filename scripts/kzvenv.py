"""Throwaway virtualenvs for the repository's Python scripts (benchmarks, fixtures).

`ensure(venv, requirements, fresh, log)` creates the venv if needed and pip-installs the
pinned requirements file, skipping the install when the venv's stamp matches the file's
hash. It returns the venv's python; the caller re-executes itself with it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from typing import Callable


def add_arguments(ap, default_venv: str) -> None:
    """The flags every script with a throwaway venv takes."""
    ap.add_argument("--venv", default=default_venv, help="throwaway venv to create/reuse")
    ap.add_argument("--fresh-venv", action="store_true", help="delete and recreate the venv first")
    ap.add_argument("--no-venv", action="store_true", help="use the current interpreter as is")


def should_reexec(args) -> bool:
    """True when the script must (create and) re-execute itself in its venv."""
    return not args.no_venv and not in_venv(args.venv)


def in_venv(venv: str) -> bool:
    """True when this interpreter runs inside `venv`."""
    return os.path.realpath(sys.prefix) == os.path.realpath(venv)


def ensure(venv: str, requirements: str, fresh: bool, log: Callable[[str], None]) -> str:
    py = os.path.join(venv, "bin", "python")
    with open(requirements, "rb") as f:
        req_hash = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(venv, ".kz-requirements.sha256")
    if fresh and os.path.isdir(venv):
        log(f"removing {venv} (--fresh-venv)")
        shutil.rmtree(venv)
    current = open(stamp).read().strip() if os.path.exists(stamp) else None
    if current != req_hash:
        if not os.path.exists(py):
            log(f"creating venv {venv}")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        log(f"pip install -r {requirements}")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "-r", requirements], check=True)
        with open(stamp, "w") as f:
            f.write(req_hash + "\n")
    return py
