"""The CPU a benchmark ran on, as BENCHMARKS.md names it (from /proc/cpuinfo)."""

from __future__ import annotations

import platform


def cpu_info() -> dict:
    """Fields of the first processor in /proc/cpuinfo (empty where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> set:
    return set(cpu_info().get("flags", "").split())


def cpu_model() -> str:
    """e.g. `AMD EPYC (family 26 model 2)`."""
    i = cpu_info()
    name = i.get("model name") or platform.processor() or platform.machine()
    return f"{name} (family {i.get('cpu family', '?')} model {i.get('model', '?')})"
