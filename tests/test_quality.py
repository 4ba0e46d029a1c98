"""The code stays clean: ruff, strict mypy, the import contracts of docs/architecture.md, public APIs only."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

PYTHON_DIRS = ("app", "tests", "bench", "grafana", "loadgen", "alertmanager", "deploy")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def present(*dirs: str) -> list[str]:
    return [d for d in dirs if (ROOT / d).is_dir()]


def test_ruff_lint() -> None:
    result = run("ruff", "check", *present(*PYTHON_DIRS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", *present(*PYTHON_DIRS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy")  # every directory of PYTHON_DIRS, configured in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    """docs/architecture.md's layers and forbidden imports, as pyproject.toml's [tool.importlinter]."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- public APIs only ------------------------------------------------------------------------------

LIBRARIES = ("opentelemetry", "prometheus_client", "grpc", "gunicorn")
DOCUMENTED_PRIVATE = frozenset({"_logs"})  # the logs signal's modules, documented as such
# The one place allowed to reach into a library's private names; every entry says what it uses, why, and
# which bench variant shows it pays (more than 5%). It does not exist: nothing has earned a place.
COMPAT = ROOT / "app" / "telemetry" / "compat.py"


def _private(dotted: str) -> bool:
    return any(
        part.startswith("_") and not part.startswith("__") and part not in DOCUMENTED_PRIVATE
        for part in dotted.split(".")
    )


def private_uses(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) for every private name of LIBRARIES that `source` imports or reads off a library name."""
    tree = ast.parse(source)
    library_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    library_names.add(alias.asname or alias.name.split(".")[0])
                    if _private(alias.name):
                        yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            for alias in node.names:
                library_names.add(alias.asname or alias.name)
                if _private(node.module) or _private(alias.name):
                    yield node.lineno, f"from {node.module} import {alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in library_names
            and _private(node.attr)
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}"


def test_the_checker_finds_private_names() -> None:
    source = (
        "import grpc\n"
        "from opentelemetry.sdk.metrics import _Gauge\n"
        "from opentelemetry.exporter.otlp.proto.grpc import _log_exporter\n"
        "from opentelemetry.sdk._logs import LoggerProvider\n"
        "from opentelemetry.sdk.metrics.export import MetricExporter as M\n"
        "x = grpc._channel\n"
        "y = M._preferred_temporality\n"
    )
    assert [what for _, what in private_uses(source)] == [
        "from opentelemetry.sdk.metrics import _Gauge",
        "from opentelemetry.exporter.otlp.proto.grpc import _log_exporter",
        "grpc._channel",
        "M._preferred_temporality",
    ]


def test_app_uses_public_library_apis_only() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted((ROOT / "app").rglob("*.py"))
        if "_pb2" not in path.name and path != COMPAT
        for line, what in private_uses(path.read_text())
    ]
    assert found == [], "private library symbols outside app/telemetry/compat.py:\n" + "\n".join(found)
