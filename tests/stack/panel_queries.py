"""Every PromQL expression of the provisioned dashboards, with Grafana's variables made concrete.

    from tests.stack.panel_queries import panel_queries
    for q in panel_queries():            # or panel_queries({"job": "platform/platform-api"})
        if q.source == "service": ...     # must return data against the service's own metrics

`source` says where the data can come from:
- "service": the service's own metrics (or the rule files' `platform:` records and ALERTS computed
  from them): a Prometheus scraping /metrics of a loaded service and evaluating prometheus/rules/
  must return data for it;
- "stack": only in the docker compose stack: Tempo's metrics-generator (traces_*) or the
  otel-collector's own telemetry (otelcol_*, platform:otelcol_*).

Loki (LogQL) and Tempo (TraceQL, service map) targets are not PromQL and are not returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tests.conftest import ROOT
from tests.stack.promql import metric_names, substitute

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
PROMETHEUS_UID = "prometheus"
STACK_PREFIXES = ("traces_", "otelcol_", "platform:otelcol_")


class PanelQuery(NamedTuple):
    dashboard_uid: str
    panel_title: str
    expr: str
    source: str  # "service" | "stack"


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def target_datasource_uid(panel: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    ds = target.get("datasource") or panel.get("datasource") or {}
    return ds.get("uid") if isinstance(ds, dict) else None


def source_of(expr: str) -> str:
    return "stack" if any(n.startswith(STACK_PREFIXES) for n in metric_names(expr)) else "service"


def panel_queries(
    variables: Mapping[str, str] | None = None, directory: Path = DASHBOARDS_DIR
) -> list[PanelQuery]:
    """(dashboard uid, panel title, PromQL with variables substituted, source) for every Prometheus target.

    `variables` overrides tests.stack.promql.DEFAULT_VARIABLES ($job = platform/platform-api,
    $instance = .*, $__rate_interval = 1m, $__range = 1h, ...), and a dashboard's own default `$job` (the
    jobs dashboard's is platform/platform-jobs) overrides the former.
    """
    out: list[PanelQuery] = []
    for dashboard in load_dashboards(directory).values():
        own = {
            v["name"]: v["current"]["value"]
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("name") == "job" and isinstance(v.get("current", {}).get("value"), str)
        }
        values = {**own, **(variables or {})}
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                if target_datasource_uid(panel, target) != PROMETHEUS_UID or target.get("hide"):
                    continue
                expr = substitute(target["expr"], values)
                out.append(PanelQuery(dashboard["uid"], panel.get("title", ""), expr, source_of(expr)))
    return out
