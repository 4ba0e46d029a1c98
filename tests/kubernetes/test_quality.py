"""The Kubernetes generator and its tests stay lint-, format- and type-clean (mypy --strict).

tests/test_quality.py covers app/, tests/ and bench/ with ruff and app/ with mypy; this adds
deploy/kubernetes/ to ruff and type-checks the generator and these tests strictly.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

FILES = ["deploy/kubernetes", "tests/kubernetes"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_lint_and_format() -> None:
    for command in (["ruff", "check", *FILES], ["ruff", "format", "--check", *FILES]):
        result = run(*command)
        assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy", "--strict", "deploy/kubernetes/generate.py", "tests/kubernetes")
    assert result.returncode == 0, result.stdout + result.stderr
