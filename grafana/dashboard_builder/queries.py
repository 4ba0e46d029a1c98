"""Query building blocks: Prometheus, Loki and TraceQL targets, and the PromQL idioms every panel shares.

Rules the queries follow (checked by tests/stack/test_dashboards.py):
- only metric names from docs/telemetry.md, or `platform:` recording rules from prometheus/rules/;
- aggregate with `sum by (job, ...)` and select `instance=~"$instance"`, never a fixed instance, so a
  panel works on the OTLP path (one series per worker) and on the scrape path (one per target);
- series that exist only after a failure (5xx, rejections, transitions) are written
  `failures or 0 * <traffic>` (`or_zero`), so a healthy service shows 0 instead of "No data".
"""

from __future__ import annotations

from typing import Any

# Data sources by their fixed uids (grafana/provisioning/datasources/datasources.yml).
PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
TEMPO = {"type": "tempo", "uid": "tempo"}

# PromQL fragments driven by the dashboard variables.
JOB = 'job=~"$job"'
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

Json = dict[str, Any]


def prom(
    expr: str,
    legend: str = "",
    *,
    ref: str = "A",
    exemplar: bool = False,
    instant: bool = False,
    fmt: str = "time_series",
) -> Json:
    return {
        "datasource": PROM,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "exemplar": exemplar,
        "format": fmt,
        "editorMode": "code",
    }


def loki(expr: str, legend: str = "", *, ref: str = "A", query_type: str = "range") -> Json:
    return {
        "datasource": LOKI,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "queryType": query_type,
        "editorMode": "code",
    }


def traceql(query: str, *, ref: str = "A", limit: int = 20) -> Json:
    return {
        "datasource": TEMPO,
        "refId": ref,
        "queryType": "traceql",
        "query": query,
        "limit": limit,
        "tableType": "traces",
    }


def or_zero(failures: str, traffic: str, *, on: str | None = None) -> str:
    """`failures`, or 0 for every series of `traffic` where no failure series exists yet.

    `on`: the labels that pair them when `failures` is grouped more finely than `traffic`.
    """
    op = "or" if on is None else f"or on ({on})"
    return f"({failures} {op} 0 * {traffic})"


def quantiles(metric: str, sel: str, by: str, legend: str, *, exemplar_on: float | None = 0.99) -> list[Json]:
    out = []
    for ref, q in zip("ABC", (0.5, 0.95, 0.99), strict=True):
        group = f"{by}, le" if by else "le"
        out.append(
            prom(
                f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
                f"p{round(q * 100)} {legend}".strip(),
                ref=ref,
                exemplar=q == exemplar_on,
            )
        )
    return out
