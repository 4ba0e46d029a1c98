"""Parse queries with the Lezer grammars of Grafana's query editors: one node process for all of them.

tests/stack/grammars/ pins the grammars (package.json, package-lock.json; `npm ci` installs them, as
.ci/run does) and holds parse.mjs, which reports each query's error nodes. A missing node or a missing or
stale install fails the calling test with the command that fixes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence

import pytest

from tests.conftest import ROOT
from tests.stack.queries import Query

GRAMMARS_DIR = ROOT / "tests" / "stack" / "grammars"
INSTALL = f"npm ci --prefix {GRAMMARS_DIR.relative_to(ROOT)}"
# Query language -> the npm package of its grammar (parse.mjs imports the same).
GRAMMARS = {
    "logql": "@grafana/lezer-logql",
    "traceql": "@grafana/lezer-traceql",
    "promql": "@prometheus-io/lezer-promql",
}
GRAMMAR_LANGUAGES = tuple(GRAMMARS)

ErrorRange = tuple[int, int]  # [from, to) in the query text


def pinned_versions() -> dict[str, str]:
    """npm package -> the exact version package.json pins."""
    versions: dict[str, str] = json.loads((GRAMMARS_DIR / "package.json").read_text())["dependencies"]
    return versions


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: install Node.js and npm, then run `{INSTALL}` (.ci/run does both)")
    for name, version in pinned_versions().items():
        manifest = GRAMMARS_DIR / "node_modules" / name / "package.json"
        installed = json.loads(manifest.read_text())["version"] if manifest.exists() else None
        if installed != version:
            found = f"{installed} is" if installed else "nothing is"
            pytest.fail(f"{name} {version} is pinned, {found} installed: run `{INSTALL}`")
    return node


def error_ranges(queries: Sequence[Query]) -> list[list[ErrorRange]]:
    """For each query, in order, where its parse tree has error nodes: [] for a query that parses."""
    items = [{"language": q.language, "query": q.text, "where": q.where} for q in queries]
    result = subprocess.run(
        [_node(), str(GRAMMARS_DIR / "parse.mjs")],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"parse.mjs exited {result.returncode}: {result.stderr}")
    return [[(e["from"], e["to"]) for e in item["errors"]] for item in json.loads(result.stdout)]


def mark(text: str, ranges: Sequence[ErrorRange]) -> str:
    """`text` with ⚠ inserted where each error node starts (as Grafana's editors underline them)."""
    out = text
    for start in sorted({start for start, _ in ranges}, reverse=True):
        out = f"{out[:start]}⚠{out[start:]}"
    return out
