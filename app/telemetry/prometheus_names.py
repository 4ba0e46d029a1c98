"""OTel metric and attribute names -> Prometheus names, exactly as Prometheus's OTLP receiver makes them.

The scrape path (`GET /metrics`) must expose the same names as the OTLP path, so that dashboards and rules
work on either. This module re-implements the rules of github.com/prometheus/otlptranslator with the
`UnderscoreEscapingWithSuffixes` strategy (Prometheus's default for OTLP ingestion), read from
metric_namer.go, unit_namer.go, label_namer.go and strconv.go:

Metric names (`normalizeName`, namespace empty):
  1. split the name into tokens on every character outside [a-zA-Z0-9:] ('_' splits too, so runs of
     separators collapse to one underscore);
  2. unit: split at the first '/'; a main or per part that is blank or contains '{' or '}' is dropped;
     known UCUM units map (s->seconds, By->bytes, ms->milliseconds, 1->"", % ->percent ...), unknown ones
     pass through; the per part becomes "per_<unit>" (s->second, m->minute, h->hour, d->day, w->week,
     mo->month, y->year); both are cleaned (invalid chars -> '_', collapsed, leading '_' trimmed);
  3. the main unit token is appended unless a token equal to it already exists; likewise the per token;
  4. monotonic counters: every "total" token is removed and one "total" appended;
  5. gauges (not non-monotonic sums) with unit "1": every "ratio" token is removed and "ratio" appended;
  6. join with '_'; a leading digit gets a '_' prefix; an empty or all-underscore result is invalid.
Label names (`LabelNamer.Build`, UTF8Allowed=false, UnderscoreLabelSanitization=false):
  every run of characters outside [a-zA-Z0-9] becomes one '_'; "__x__" keeps its double underscores;
  a leading digit gets the prefix "key_"; an all-underscore result is invalid.
Label values: strings as is, booleans "true"/"false", numbers in decimal, sequences as JSON.
When two attributes sanitise to the same label, their values are joined with ';' in sorted key order.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence

_TOKEN_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")
_INVALID_UNIT_CHARS = re.compile(r"[^a-zA-Z0-9:]")
_UNDERSCORES = re.compile(r"__+")
_INVALID_LABEL_RUN = re.compile(r"[^a-zA-Z0-9]+")

_UNIT_MAP = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNIT_MAP = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


class MetricKind(enum.Enum):
    """The otlptranslator metric types that change a name."""

    MONOTONIC_COUNTER = "counter"
    NON_MONOTONIC_COUNTER = "non_monotonic_counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


def _unit_suffixes(unit: str) -> tuple[str, str]:
    parts = unit.split("/", 1)
    main = per = ""
    main_otel = parts[0].strip()
    if main_otel and "{" not in main_otel and "}" not in main_otel:
        main = _UNIT_MAP.get(main_otel, main_otel)
    if len(parts) > 1 and parts[1]:
        per_otel = parts[1].strip()
        if per_otel and "{" not in per_otel and "}" not in per_otel:
            per = _PER_UNIT_MAP.get(per_otel, per_otel)
        if per:
            per = "per_" + per
    return main, per


def _clean_unit(unit: str) -> str:
    return _UNDERSCORES.sub("_", _INVALID_UNIT_CHARS.sub("_", unit)).removeprefix("_")


def _remove(tokens: list[str], value: str) -> list[str]:
    return [t for t in tokens if t != value]


def metric_name(name: str, unit: str, kind: MetricKind) -> str | None:
    """The Prometheus name of an OTel metric, or None if the rules give no valid name."""
    tokens = [t for t in _TOKEN_SPLIT.split(name) if t]
    main, per = _unit_suffixes(unit)
    main, per = _clean_unit(main), _clean_unit(per)
    if main in tokens:
        main = ""
    if per == "per_":
        per = ""
    else:
        per = per.removesuffix("_")
        if per in tokens:
            per = ""
    if per:
        main = main.removesuffix("_")
    if main:
        tokens.append(main)
    if per:
        tokens.append(per)
    if kind is MetricKind.MONOTONIC_COUNTER:
        tokens = [*_remove(tokens, "total"), "total"]
    if unit == "1" and kind is MetricKind.GAUGE:
        tokens = [*_remove(tokens, "ratio"), "ratio"]
    result = "_".join(tokens)
    if result and result[0].isdigit():
        result = "_" + result
    if not result.strip("_"):
        return None
    return result


def label_name(key: str) -> str | None:
    """The Prometheus label name of an OTel attribute key, or None if it has none."""
    if not key:
        return None
    reserved = len(key) >= 4 and key.startswith("__") and key.endswith("__")
    body = key[2:-2] if reserved else key
    result = _INVALID_LABEL_RUN.sub("_", body)
    if reserved:
        result = "__" + result + "__"
    if result[0].isdigit():
        result = "key_" + result
    if not result.strip("_"):
        return None
    return result


def label_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Sequence):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


def labels(attributes: Mapping[str, object]) -> dict[str, str]:
    """Attributes -> Prometheus labels; colliding keys are joined with ';' in sorted original-key order."""
    result: dict[str, str] = {}
    for key in sorted(attributes):
        name = label_name(key)
        if name is None:
            continue
        value = label_value(attributes[key])
        result[name] = f"{result[name]};{value}" if name in result else value
    return result
