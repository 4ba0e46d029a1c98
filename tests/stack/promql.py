"""PromQL helpers for the stack tests: the metric names an expression reads, and Grafana variables.

`metric_names` is a tokenizer, not a full parser: promtool checks the syntax separately (on a generated
rule file), so this only has to tell metric names apart from everything else an expression contains:
function and aggregation names, label names (in matchers and in by/without/on/ignoring/group_left/
group_right lists), keywords, numbers, durations and strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)
# Keywords whose parenthesised list holds label names, not expressions.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-zA-Z0-9_]*))
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)


class PromQLTokenError(ValueError):
    pass


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, whitespace and comments dropped."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLTokenError(f"cannot tokenize {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append((kind, match.group()))
        pos = match.end()
    return out


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects (the bare identifiers that are neither functions nor labels)."""
    toks = tokens(expr)
    names: set[str] = set()
    brace = 0  # inside {...}: label matchers
    bracket = 0  # inside [...]: ranges and subquery steps
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            brace += 1
        elif text == "}":
            brace -= 1
        elif text == "[":
            bracket += 1
        elif text == "]":
            bracket -= 1
        elif kind == "ident" and not brace and not bracket:
            lowered = text.lower()
            if lowered in LABEL_LIST_KEYWORDS and nxt == "(":
                i = _skip_parens(toks, i + 1)
                continue
            if lowered in KEYWORDS or lowered in AGGREGATIONS or nxt == "(":
                pass  # a keyword, an aggregation, or a function call
            elif text == "__name__":
                raise PromQLTokenError(f"selecting by __name__ hides metric names from this check: {expr!r}")
            else:
                names.add(text)
        elif kind == "string" and brace and _previous_label(toks, i) == "__name__":
            raise PromQLTokenError(f"selecting by __name__ hides metric names from this check: {expr!r}")
        i += 1
    return names


def _skip_parens(toks: list[tuple[str, str]], open_at: int) -> int:
    depth = 0
    for j in range(open_at, len(toks)):
        if toks[j][1] == "(":
            depth += 1
        elif toks[j][1] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    raise PromQLTokenError("unbalanced parentheses")


def _previous_label(toks: list[tuple[str, str]], i: int) -> str:
    return toks[i - 2][1] if i >= 2 else ""


# ---- Grafana variables --------------------------------------------------------------------------------

# The W3C trace-context examples: a trace id and a span id as Grafana's links carry them.
SAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLE_SPAN_ID = "00f067aa0ba902b7"

# What each variable becomes when an expression is checked or run outside Grafana. Values are regex-safe
# where queries use them with =~.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "job": "platform/platform-api",
    "instance": ".*",
    "service": "platform-api",
    "filter": "",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__auto": "1m",
    # Data links (datasources.yml): the trace and span a link starts from, and the value of the field it
    # is on (every such field here holds a trace id).
    "__trace.traceId": SAMPLE_TRACE_ID,
    "__span.traceId": SAMPLE_TRACE_ID,
    "__span.spanId": SAMPLE_SPAN_ID,
    "__value.raw": SAMPLE_TRACE_ID,
}

# ${name}, ${name.field.path} and ${name:format}; [[name]]; $name (no field path in this form).
_VARIABLE = re.compile(r"\$\{(\w+(?:\.[^:}]+)?)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


class UnknownVariableError(KeyError):
    pass


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace $var, ${var}, ${var.path}, ${var:fmt} and [[var]] with concrete values; unknown ones raise."""
    table = {**DEFAULT_VARIABLES, **(values or {})}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in table:
            raise UnknownVariableError(f"no value for Grafana variable ${name} in {expr!r}")
        return table[name]

    return _VARIABLE.sub(repl, expr)
