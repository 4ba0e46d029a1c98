"""The machine and tools a report was measured on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    try:
        model = cpu_model(Path("/proc/cpuinfo").read_text())
    except OSError:
        model = platform.machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {model}; Python {platform.python_version()}; "
        f"Linux {platform.release()} ({platform.machine()}); load average at start {load}"
    )


def tool_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    first = (done.stdout + done.stderr).strip().splitlines()
    return first[0] if first else "?"


def describe_tools() -> str:
    wrk = re.sub(r"\s*\[.*", "", tool_version(["wrk", "-v"]))
    h2load = tool_version(["h2load", "--version"])
    redis = re.sub(r"\s+sha=.*", "", tool_version(["redis-server", "--version"]))
    return f"{wrk}; {h2load}; {redis}"
