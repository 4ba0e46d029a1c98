"""Run Debian's promtool (2.42) from the stack tests; a missing binary fails with the fix in the message."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def promtool_path() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install Debian's `prometheus` package (.ci/run does)")
    return path


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_path(), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def assert_promtool_ok(*args: str | Path, cwd: Path | None = None) -> str:
    """Run promtool and fail with its output unless it exits 0; returns stdout."""
    result = run_promtool(*args, cwd=cwd)
    assert result.returncode == 0, (
        f"promtool {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout
