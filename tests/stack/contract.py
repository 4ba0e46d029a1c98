"""The metric names docs/telemetry.md allows, and the recording-rule names prometheus/rules/ defines."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

TELEMETRY_MD = ROOT / "docs" / "telemetry.md"
RULES_DIR = ROOT / "prometheus" / "rules"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
_BACKTICKED = re.compile(r"`([^`]+)`")
_PROM_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@cache
def contract_names(path: Path = TELEMETRY_MD) -> frozenset[str]:
    """Names from every markdown table with a "Prometheus name" column.

    A histogram row allows name_bucket, name_sum and name_count (not the bare name); a name written
    with a trailing `_*` (`foo_*`) is read as the histogram `foo`.
    """
    names: set[str] = set()
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        is_table = lines[i].lstrip().startswith("|") and i + 1 < len(lines)
        if is_table and set(lines[i + 1].strip()) <= set("|-: "):
            header = [h.lower() for h in _cells(lines[i])]
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            if "prometheus name" not in header:
                continue
            name_col = header.index("prometheus name")
            type_col = header.index("type") if "type" in header else None
            for row in rows:
                is_histogram = type_col is not None and row[type_col].strip() == "histogram"
                for name in _BACKTICKED.findall(row[name_col]):
                    name = name.strip()
                    if name.endswith("_*"):
                        name, is_histogram = name[:-2], True
                    if not _PROM_NAME.match(name):
                        continue
                    if is_histogram:
                        names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
                    else:
                        names.add(name)
        else:
            i += 1
    return frozenset(names)


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(rules_dir.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rules(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(rules_dir) for rule in group["rules"]]


def recorded_names(rules_dir: Path = RULES_DIR) -> frozenset[str]:
    """Names the recording rules define."""
    return frozenset(str(rule["record"]) for rule in rules(rules_dir) if "record" in rule)


def allowed_names() -> frozenset[str]:
    return contract_names() | recorded_names()
