"""Shared fixtures: data directories, a random corpus, and a real `kernelize serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ADMIN_KEY = "kz_pytest000000_PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP"


def kernelize_bin() -> str:
    """The `kernelize` binary the tests start (scripts/python.sh sets KERNELIZE_BIN)."""
    b = os.environ.get("KERNELIZE_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache" / "kz-target"))
    return str(Path(target) / "debug" / "kernelize")


@pytest.fixture
def corpus():
    """500 records in 16 dims: clustered vectors, texts, metadata with a category."""
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(10, 16)).astype(np.float32)
    vecs = (centers[rng.integers(0, 10, 500)] + 0.3 * rng.normal(size=(500, 16))).astype(np.float32)
    words = ["apple", "river", "stone", "cloud", "ember", "frost", "grove", "harbor"]
    ids = [f"r{i:04d}" for i in range(500)]
    texts = [f"{words[i % 8]} {words[(i * 3) % 8]} number {i}" for i in range(500)]
    meta = [{"cat": ["a", "b", "c"][i % 3], "n": i} for i in range(500)]
    return ids, vecs, texts, meta


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [kernelize_bin(), "--data-dir", str(data_dir), "serve", "--listen", "127.0.0.1:0", "--print-addr",
             "--admin-key", ADMIN_KEY, "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"kernelize serve did not start: {line!r}")
        self.url = "http://" + line.split()[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve():
    """Starts `kernelize serve` on a data directory; stopped (by PID) at the end."""
    started = []

    def start(data_dir: Path) -> Server:
        s = Server(data_dir)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def run_py(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs Python code in a separate process (the same interpreter and package)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
