"""Generate the provisioned Grafana dashboards: `python grafana/build_dashboards.py`.

The JSON in grafana/dashboards/ is what Grafana loads; this script is its source, so that ids, grid
positions and data source references stay consistent across four dashboards. Edit here, regenerate,
commit both (tests/stack/test_dashboards.py fails when the JSON is stale).

Rules the queries follow (checked by the tests):
- only metric names from docs/telemetry.md, or `platform:` recording rules from prometheus/rules/;
- aggregate with `sum by (job, ...)` and select `instance=~"$instance"`, never a fixed instance, so a
  panel works on the OTLP path (one series per worker) and on the scrape path (one per target);
- series that exist only after a failure (5xx, rejections, transitions) are written
  `failures or 0 * <traffic>`, so a healthy service shows 0 instead of "No data".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 42  # Grafana 12.4 (.env GRAFANA_IMAGE) migrates dashboards up to this version.
TAG = "platform"

PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
TEMPO = {"type": "tempo", "uid": "tempo"}

SLO_BUDGET = 0.005  # docs/slo.md: 99.5% of requests succeed
LATENCY_THRESHOLD_S = 0.5  # docs/slo.md: p99 alert threshold
LAG_THRESHOLD_S = 0.1  # PlatformEventLoopLag threshold

JOB = 'job=~"$job"'
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"

Json = dict[str, Any]


# ---- building blocks --------------------------------------------------------------------------------


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


class Layout:
    """Places panels left to right in a 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
                "id": len(self.panels) + 1,
            }
        )
        self._y += 1

    def add(self, panel: Json, w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"x": self._x, "y": self._y, "w": w, "h": h}
        panel["id"] = len(self.panels) + 1
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
        self._x = 0
        self._row_h = 0


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def timeseries(
    title: str,
    targets: list[Json],
    *,
    unit: str = "short",
    description: str = "",
    datasource: Json = PROM,
    stack: bool = False,
    bars: bool = False,
    threshold_line: float | None = None,
    min_: float | None = None,
    max_: float | None = None,
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: Json = {"unit": unit, "custom": custom}
    if threshold_line is not None:
        custom["thresholdsStyle"] = {"mode": "line+area"}
        defaults["thresholds"] = thresholds((None, "transparent"), (threshold_line, "red"))
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": datasource,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    targets: list[Json],
    *,
    unit: str = "short",
    description: str = "",
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    decimals: int | None = None,
) -> Json:
    defaults: Json = {"unit": unit, "thresholds": thresholds(*steps), "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "value_and_name",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def heatmap(title: str, target: Json, *, description: str = "") -> Json:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": [target],
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "steps": 64,
                "exponent": 0.5,
                "fill": "dark-orange",
                "reverse": False,
                "scale": "exponential",
            },
            "exemplars": {"color": "rgba(80,160,255,0.9)"},
            "filterValues": {"le": 1e-9},
            "rowsFrame": {"layout": "auto"},
            "yAxis": {"axisPlacement": "left", "unit": "s", "reverse": False},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "legend": {"show": True},
        },
    }


def bargauge(title: str, target: Json, *, unit: str = "reqps", description: str = "") -> Json:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": PROM,
        "targets": [target],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": thresholds((None, "blue")),
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def table(
    title: str,
    targets: list[Json],
    *,
    datasource: Json = PROM,
    description: str = "",
    transformations: list[Json] | None = None,
) -> Json:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": datasource,
        "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": transformations or [],
    }


def variable_query(
    name: str, label: str, query: str, *, default: str, include_all: bool = False, datasource: Json = PROM
) -> Json:
    var: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": datasource,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"} if datasource == PROM else query,
        "refresh": 2,  # on time range change: workers come and go
        "sort": 1,
        "multi": include_all,
        "includeAll": include_all,
        "current": {"text": "All", "value": "$__all"} if include_all else {"text": default, "value": default},
        "hide": 0,
        "options": [],
        "regex": "",
    }
    if include_all:
        var["allValue"] = ".*"
    return var


def job_var(metric: str) -> Json:
    return variable_query(
        "job", "service (job)", f"label_values({metric}, job)", default="platform/platform-api"
    )


def instance_var(metric: str) -> Json:
    return variable_query(
        "instance",
        "worker (instance)",
        f'label_values({metric}{{job=~"$job"}}, instance)',
        default="",
        include_all=True,
    )


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        # Every platform dashboard links to the others, keeping time range and variables.
        "links": [
            {
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "title": "Platform dashboards",
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables},
        "panels": layout.panels,
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


# ---- 1. service overview --------------------------------------------------------------------------------


def overview() -> Json:
    lay = Layout()
    http = "http_server_request_duration_seconds"
    rpc = "rpc_server_call_duration_seconds"
    http_5xx = f'{SEL}, http_response_status_code=~"5.."'
    rpc_fault = f'{SEL}, rpc_grpc_status_code=~"2|4|13|14|15"'

    lay.row("Alerts and SLO (docs/slo.md: 99.5% of HTTP + gRPC requests succeed over 30 days)")
    lay.add(
        {
            "type": "alertlist",
            "title": "Firing and pending alerts",
            "description": "Prometheus rules (prometheus/rules/), through the Prometheus "
            "data source's ruler API.",
            "options": {
                "viewMode": "list",
                "groupMode": "default",
                "groupBy": [],
                "maxItems": 20,
                "sortOrder": 1,
                "dashboardAlerts": False,
                "alertName": "",
                "alertInstanceLabelFilter": "",
                "stateFilter": {
                    "firing": True,
                    "pending": True,
                    "noData": False,
                    "normal": False,
                    "error": True,
                },
                "folder": None,
                "showInactiveAlerts": False,
            },
        },
        8,
        8,
    )
    lay.add(
        stat(
            "Firing alerts",
            [prom('count(ALERTS{alertstate="firing"}) or vector(0)', "firing", instant=True)],
            steps=((None, "green"), (1, "red")),
            description="All firing Prometheus alerts.",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Availability, 30 days",
            [prom(f"1 - platform:request_error_ratio:rate30d{{{JOB}}}", "{{job}}")],
            unit="percentunit",
            decimals=3,
            steps=((None, "red"), (1 - SLO_BUDGET, "green")),
            description="Share of HTTP + gRPC requests that succeeded (recording rule, 30d).",
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Error budget left, 30 days",
            [prom(f"1 - platform:request_error_ratio:rate30d{{{JOB}}} / {SLO_BUDGET}", "{{job}}")],
            unit="percentunit",
            decimals=1,
            steps=((None, "red"), (0.25, "orange"), (0.5, "green")),
            description="1 - (error ratio / error budget 0.005). Below 0 the SLO is missed.",
        ),
        6,
        4,
    )
    lay.add(
        timeseries(
            "Error budget burn rate",
            [
                prom(f"platform:request_error_ratio:rate5m{{{JOB}}} / {SLO_BUDGET}", "5m", ref="A"),
                prom(f"platform:request_error_ratio:rate1h{{{JOB}}} / {SLO_BUDGET}", "1h", ref="B"),
                prom(f"platform:request_error_ratio:rate6h{{{JOB}}} / {SLO_BUDGET}", "6h", ref="C"),
                prom(f"platform:request_error_ratio:rate3d{{{JOB}}} / {SLO_BUDGET}", "3d", ref="D"),
            ],
            unit="suffix:x",
            threshold_line=14.4,
            min_=0,
            description="Error ratio / budget. 1x spends the budget in exactly 30 days; the fast-burn page "
            "needs 14.4x over 1h and 5m (or 6x over 6h and 30m).",
        ),
        16,
        4,
    )

    lay.row("HTTP")
    lay.add(
        timeseries(
            "HTTP requests by status",
            [
                prom(
                    f"sum by (http_response_status_code) (rate({http}_count{{{SEL}}}[{RI}]))",
                    "{{http_response_status_code}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "HTTP error ratio (5xx)",
            [
                prom(
                    or_zero(
                        f"sum by (job) (rate({http}_count{{{http_5xx}}}[{RI}]))",
                        f"sum by (job) (rate({http}_count{{{SEL}}}[{RI}]))",
                    )
                    + f" / sum by (job) (rate({http}_count{{{SEL}}}[{RI}]))",
                    "{{job}}",
                )
            ],
            unit="percentunit",
            threshold_line=SLO_BUDGET,
            min_=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "HTTP duration p50 / p95 / p99",
            quantiles(http, SEL, "", ""),
            unit="s",
            threshold_line=LATENCY_THRESHOLD_S,
            description="Exemplars (dots on p99) open the request's trace in Tempo.",
        ),
        8,
        8,
    )
    lay.add(
        heatmap(
            "HTTP duration heatmap",
            prom(
                f"sum by (le) (increase({http}_bucket{{{SEL}}}[{RI}]))",
                "{{le}}",
                exemplar=True,
                fmt="heatmap",
            ),
            description="Requests per duration bucket; exemplars link to traces.",
        ),
        12,
        8,
    )
    lay.add(
        bargauge(
            "Top HTTP routes",
            prom(
                f"topk(10, sum by (http_request_method, http_route) (rate({http}_count{{{SEL}}}[$__range])))",
                "{{http_request_method}} {{http_route}}",
                instant=True,
            ),
            description="Request rate over the dashboard's time range.",
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "HTTP 5xx by route",
            [
                prom(
                    or_zero(
                        f"sum by (http_route) (rate({http}_count{{{http_5xx}}}[{RI}]))",
                        f"sum by (http_route) (rate({http}_count{{{SEL}}}[{RI}]))",
                    ),
                    "{{http_route}}",
                )
            ],
            unit="reqps",
        ),
        6,
        8,
    )

    lay.row("gRPC")
    lay.add(
        timeseries(
            "gRPC calls by status code",
            [
                prom(
                    f"sum by (rpc_grpc_status_code) (rate({rpc}_count{{{SEL}}}[{RI}]))",
                    "code {{rpc_grpc_status_code}}",
                )
            ],
            unit="reqps",
            stack=True,
            description="Numeric gRPC codes: 0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 8 RESOURCE_EXHAUSTED, "
            "14 UNAVAILABLE, ...",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "gRPC error ratio (server faults)",
            [
                prom(
                    or_zero(
                        f"sum by (job) (rate({rpc}_count{{{rpc_fault}}}[{RI}]))",
                        f"sum by (job) (rate({rpc}_count{{{SEL}}}[{RI}]))",
                    )
                    + f" / sum by (job) (rate({rpc}_count{{{SEL}}}[{RI}]))",
                    "{{job}}",
                )
            ],
            unit="percentunit",
            threshold_line=SLO_BUDGET,
            min_=0,
            description="UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS over all calls.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "gRPC duration p50 / p95 / p99",
            quantiles(rpc, SEL, "", ""),
            unit="s",
            threshold_line=LATENCY_THRESHOLD_S,
        ),
        8,
        8,
    )
    lay.add(
        heatmap(
            "gRPC duration heatmap",
            prom(
                f"sum by (le) (increase({rpc}_bucket{{{SEL}}}[{RI}]))", "{{le}}", exemplar=True, fmt="heatmap"
            ),
        ),
        12,
        8,
    )
    lay.add(
        bargauge(
            "Top gRPC methods",
            prom(
                f"topk(10, sum by (rpc_method) (rate({rpc}_count{{{SEL}}}[$__range])))",
                "{{rpc_method}}",
                instant=True,
            ),
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "gRPC p99 by method",
            [
                prom(
                    f"histogram_quantile(0.99, sum by (rpc_method, le) (rate({rpc}_bucket{{{SEL}}}[{RI}])))",
                    "{{rpc_method}}",
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        6,
        8,
    )

    return dashboard(
        "platform-overview",
        "Platform / Service overview",
        "RED for HTTP and gRPC, the availability SLO and its error budget, firing alerts.",
        lay,
        [job_var(f"{http}_count"), instance_var(f"{http}_count")],
    )


# ---- 2. runtime and saturation ----------------------------------------------------------------------------


def runtime() -> Json:
    lay = Layout()
    lag = "platform_eventloop_delay_seconds"
    wake = "platform_thread_wakeup_delay_seconds"
    pool = "platform_pool_task_duration_seconds"

    lay.row("Workers")
    lay.add(
        stat(
            "Workers alive",
            [prom(f"sum by (job) (platform_workers{{{JOB}}})", "{{job}}")],
            steps=((None, "red"), (1, "green")),
            description="Live gunicorn workers. On the OTLP path a dead worker's 1 lingers up to 5 "
            "minutes (no staleness for pushed series).",
        ),
        4,
        5,
    )
    lay.add(
        table(
            "Build",
            [
                prom(
                    f"max by (job, version, commit) (platform_build_info{{{JOB}}})", instant=True, fmt="table"
                )
            ],
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
        ),
        8,
        5,
    )
    lay.add(
        timeseries(
            "Active HTTP requests per worker",
            [prom(f"sum by (instance) (http_server_active_requests{{{SEL}}})", "{{instance}}")],
        ),
        12,
        5,
    )

    lay.row("Event loop and GIL")
    lay.add(
        timeseries(
            "gRPC event-loop lag p99 per worker",
            [
                prom(
                    "histogram_quantile(0.99, sum by (instance, loop, le) "
                    f"(rate({lag}_bucket{{{SEL}}}[{RI}])))",
                    "{{instance}} {{loop}}",
                )
            ],
            unit="s",
            threshold_line=LAG_THRESHOLD_S,
            description=(
                "How late the gRPC loop runs a scheduled callback. PlatformEventLoopLag fires over 100 ms."
            ),
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Thread wake-up delay p99 per worker",
            [
                prom(
                    f"histogram_quantile(0.99, sum by (instance, le) (rate({wake}_bucket{{{SEL}}}[{RI}])))",
                    "{{instance}}",
                )
            ],
            unit="s",
            description="How late a sleeping sampler thread wakes: GIL contention and CPU starvation.",
        ),
        12,
        8,
    )

    lay.row("Process")
    lay.add(
        timeseries(
            "CPU per worker",
            [
                prom(
                    f"sum by (instance, cpu_mode) (rate(process_cpu_time_seconds_total{{{SEL}}}[{RI}]))",
                    "{{instance}} {{cpu_mode}}",
                )
            ],
            unit="percentunit",
            stack=True,
            description="CPU seconds per second (1.0 = one core).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Memory (RSS) per worker",
            [prom(f"sum by (instance) (process_memory_usage_bytes{{{SEL}}})", "{{instance}}")],
            unit="bytes",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Threads per worker", [prom(f"sum by (instance) (process_thread_count{{{SEL}}})", "{{instance}}")]
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "GC collections by generation",
            [
                prom(
                    f"sum by (cpython_gc_generation) (rate(cpython_gc_collections_total{{{SEL}}}[{RI}]))",
                    "gen {{cpython_gc_generation}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        8,
        8,
    )

    lay.row("Worker pool (CPU-bound work)")
    lay.add(
        timeseries(
            "Pool queue and active tasks",
            [
                prom(f"sum by (job) (platform_pool_queued{{{SEL}}})", "queued", ref="A"),
                prom(f"sum by (job) (platform_pool_active{{{SEL}}})", "active", ref="B"),
            ],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool rejections (queue full)",
            [
                prom(
                    or_zero(
                        f"sum by (task) (rate(platform_pool_rejections_total{{{SEL}}}[{RI}]))",
                        f"sum by (task) (rate({pool}_count{{{SEL}}}[{RI}]))",
                    ),
                    "{{task}}",
                )
            ],
            unit="reqps",
            description="Tasks refused because the queue was full (503 Overloaded / RESOURCE_EXHAUSTED).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool tasks by outcome",
            [prom(f"sum by (task, outcome) (rate({pool}_count{{{SEL}}}[{RI}]))", "{{task}} {{outcome}}")],
            unit="ops",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool task duration p99 by task",
            [
                prom(
                    f"histogram_quantile(0.99, sum by (task, le) (rate({pool}_bucket{{{SEL}}}[{RI}])))",
                    "{{task}}",
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        8,
        8,
    )

    return dashboard(
        "platform-runtime",
        "Platform / Runtime and saturation",
        "Per-worker event-loop lag, GIL wake-up delay, CPU, memory, GC, the worker pool.",
        lay,
        [job_var("platform_build_info"), instance_var("platform_build_info")],
    )


# ---- 3. dependencies and resilience ------------------------------------------------------------------------


def dependencies() -> Json:
    lay = Layout()
    client = "http_client_request_duration_seconds"
    redis = "db_client_operation_duration_seconds"
    breaker = "platform_circuit_breaker_state"

    lay.row("Circuit breaker and retries (quotes upstream)")
    state = {
        "type": "state-timeline",
        "title": "Circuit breaker state",
        "description": "Worst state over all workers: closed, half_open (probing) or open.",
        "datasource": PROM,
        "targets": [
            prom(
                f'max by (name) ({breaker}{{{SEL}, state="open"}} * 2 or {breaker}{{{SEL}, '
                f'state="half_open"}}'
                f' or {breaker}{{{SEL}, state="closed"}} * 0)',
                "{{name}}",
            )
        ],
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": thresholds((None, "green"), (1, "yellow"), (2, "red")),
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "closed", "color": "green", "index": 0},
                            "1": {"text": "half_open", "color": "yellow", "index": 1},
                            "2": {"text": "open", "color": "red", "index": 2},
                        },
                    }
                ],
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "mergeValues": True,
            "showValue": "auto",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    }
    lay.add(state, 12, 6)
    lay.add(
        timeseries(
            "Breaker calls by outcome",
            [
                prom(
                    f"sum by (name, outcome) (rate(platform_circuit_breaker_calls_total{{{SEL}}}[{RI}]))",
                    "{{name}} {{outcome}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        12,
        6,
    )
    lay.add(
        timeseries(
            "Breaker transitions",
            [
                prom(
                    or_zero(
                        "sum by (name, from_state, to_state) "
                        "(increase(platform_circuit_breaker_transitions_total"
                        f"{{{SEL}}}[{RI}]))",
                        f"sum by (name) (increase(platform_circuit_breaker_calls_total{{{SEL}}}[{RI}]))",
                        on="name",
                    ),
                    "{{name}} {{from_state}} -> {{to_state}}",
                )
            ],
            bars=True,
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Retry attempts by outcome",
            [
                prom(
                    f"sum by (dependency, outcome) (rate(platform_retry_attempts_total{{{SEL}}}[{RI}]))",
                    "{{dependency}} {{outcome}}",
                )
            ],
            unit="ops",
            stack=True,
            description=(
                "success: answered; retry: failed and tried again; gave_up: out of attempts or deadline."
            ),
        ),
        12,
        7,
    )

    lay.row("Upstream calls (urllib3 client)")
    lay.add(
        timeseries(
            "Upstream requests by status",
            [
                prom(
                    "sum by (server_address, http_response_status_code) "
                    f"(rate({client}_count{{{SEL}}}[{RI}]))",
                    "{{server_address}} {{http_response_status_code}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Upstream error ratio",
            [
                prom(
                    or_zero(
                        f'sum by (server_address) (rate({client}_count{{{SEL}, error_type!=""}}[{RI}]))',
                        f"sum by (server_address) (rate({client}_count{{{SEL}}}[{RI}]))",
                    )
                    + f" / sum by (server_address) (rate({client}_count{{{SEL}}}[{RI}]))",
                    "{{server_address}}",
                )
            ],
            unit="percentunit",
            min_=0,
            description="Calls with error.type set: 4xx/5xx answers and exceptions.",
        ),
        8,
        8,
    )
    lay.add(timeseries("Upstream latency p50 / p95 / p99", quantiles(client, SEL, "", ""), unit="s"), 8, 8)

    lay.row("Rate limiting and caches")
    lay.add(
        timeseries(
            "Rate limiter decisions",
            [
                prom(
                    f"sum by (result) (rate(platform_ratelimit_decisions_total{{{SEL}}}[{RI}]))", "{{result}}"
                )
            ],
            unit="reqps",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Rate-limit rejection ratio",
            [
                prom(
                    or_zero(
                        f"sum by (job) (rate(platform_ratelimit_decisions_total{{{SEL}, "
                        f'result="rejected"}}[{RI}]))',
                        f"sum by (job) (rate(platform_ratelimit_decisions_total{{{SEL}}}[{RI}]))",
                    )
                    + f" / sum by (job) (rate(platform_ratelimit_decisions_total{{{SEL}}}[{RI}]))",
                    "{{job}}",
                )
            ],
            unit="percentunit",
            min_=0,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Cache hit ratio",
            [
                prom(
                    or_zero(
                        f'sum by (cache) (rate(platform_cache_requests_total{{{SEL}, result="hit"}}[{RI}]))',
                        f"sum by (cache) (rate(platform_cache_requests_total{{{SEL}}}[{RI}]))",
                    )
                    + f" / sum by (cache) (rate(platform_cache_requests_total{{{SEL}}}[{RI}]))",
                    "{{cache}}",
                )
            ],
            unit="percentunit",
            min_=0,
            max_=1,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Cache requests by result",
            [
                prom(
                    f"sum by (cache, result) (rate(platform_cache_requests_total{{{SEL}}}[{RI}]))",
                    "{{cache}} {{result}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        12,
        7,
    )
    lay.add(
        timeseries("Cache size", [prom(f"sum by (cache) (platform_cache_size{{{SEL}}})", "{{cache}}")]), 12, 7
    )

    lay.row("Redis")
    lay.add(
        timeseries(
            "Redis latency p99 by operation",
            [
                prom(
                    "histogram_quantile(0.99, sum by (db_operation_name, le) "
                    f"(rate({redis}_bucket{{{SEL}}}[{RI}])))",
                    "{{db_operation_name}}",
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Redis operations by name",
            [
                prom(
                    f"sum by (db_operation_name) (rate({redis}_count{{{SEL}}}[{RI}]))",
                    "{{db_operation_name}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        12,
        8,
    )

    lay.row("Service graph (Tempo metrics-generator; only in the docker compose stack)")
    lay.add(
        {
            "type": "nodeGraph",
            "title": "Service graph",
            "description": "From traces: Tempo's service-graph metrics, read through the Tempo data source.",
            "datasource": TEMPO,
            "targets": [{"datasource": TEMPO, "refId": "A", "queryType": "serviceMap"}],
            "options": {},
        },
        12,
        10,
    )
    lay.add(
        timeseries(
            "Service graph edges: requests and failures",
            [
                prom(
                    "sum by (client, server) (rate(traces_service_graph_request_total[$__rate_interval]))",
                    "{{client}} -> {{server}}",
                    ref="A",
                ),
                prom(
                    "sum by (client, server) "
                    "(rate(traces_service_graph_request_failed_total[$__rate_interval]))",
                    "{{client}} -> {{server}} failed",
                    ref="B",
                ),
            ],
            unit="reqps",
        ),
        12,
        5,
    )
    lay.add(
        timeseries(
            "Service graph edges: server p99",
            [
                prom(
                    "histogram_quantile(0.99, sum by (client, server, le) "
                    "(rate(traces_service_graph_request_server_seconds_bucket[$__rate_interval])))",
                    "{{client}} -> {{server}}",
                )
            ],
            unit="s",
        ),
        12,
        5,
    )

    return dashboard(
        "platform-dependencies",
        "Platform / Dependencies and resilience",
        "Circuit breaker, retries, upstream calls, rate limiting, caches, Redis, service graph.",
        lay,
        [job_var(f"{client}_count"), instance_var(f"{client}_count")],
    )


# ---- 4. logs and traces ----------------------------------------------------------------------------------


def logs_traces() -> Json:
    lay = Layout()
    svc = 'service_name="$service"'

    lay.row("Logs (Loki, OTLP)")
    lay.add(
        timeseries(
            "Log volume by level",
            [
                loki(
                    f"sum by (severity_text) (count_over_time({{{svc}}} |= `$filter` [$__auto]))",
                    "{{severity_text}}",
                )
            ],
            datasource=LOKI,
            bars=True,
            stack=True,
            description=(
                "OTLP log records; severity_text is structured metadata set by Loki's OTLP ingestion."
            ),
        ),
        24,
        7,
    )
    lay.add(
        {
            "type": "logs",
            "title": "Logs",
            "description": "Expand a line: its trace_id links to the trace in Tempo.",
            "datasource": LOKI,
            "targets": [loki(f"{{{svc}}} |= `$filter`", query_type="range")],
            "options": {
                "showTime": True,
                "wrapLogMessage": True,
                "enableLogDetails": True,
                "sortOrder": "Descending",
                "dedupStrategy": "none",
                "prettifyLogMessage": False,
                "showCommonLabels": False,
                "showLabels": False,
            },
        },
        24,
        12,
    )

    lay.row("Traces (Tempo)")
    lay.add(
        table(
            "Recent error traces",
            [traceql('{ resource.service.name = "$service" && status = error }')],
            datasource=TEMPO,
            description="Spans with error status (5xx, exceptions, server-fault gRPC codes).",
        ),
        12,
        10,
    )
    lay.add(
        table(
            "Slow traces (over 500 ms)",
            [traceql('{ resource.service.name = "$service" && kind = server && duration > 500ms }')],
            datasource=TEMPO,
        ),
        12,
        10,
    )

    lay.row("Telemetry pipeline")
    job = 'job="platform/$service"'
    lay.add(
        timeseries(
            "SDK export failures by signal",
            [
                prom(
                    f"sum by (signal) (rate(platform_telemetry_export_failures_total{{{job}}}[{RI}])) "
                    "or on () vector(0)",
                    "{{signal}}",
                )
            ],
            unit="ops",
            description="Batches the service's OTLP exporters failed to deliver to the collector.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Collector exporter failures",
            [prom("platform:otelcol_exporter_send_failed:rate5m", "{{exporter}} {{signal}}")],
            unit="ops",
            description="Items the collector failed to send after retries (PlatformCollectorDroppingData).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Collector receiver refusals",
            [
                prom(
                    f"sum by (receiver) (rate(otelcol_receiver_refused_spans_total[{RI}]))",
                    "{{receiver}} spans",
                    ref="A",
                ),
                prom(
                    f"sum by (receiver) (rate(otelcol_receiver_refused_metric_points_total[{RI}]))",
                    "{{receiver}} metric points",
                    ref="B",
                ),
                prom(
                    f"sum by (receiver) (rate(otelcol_receiver_refused_log_records_total[{RI}]))",
                    "{{receiver}} log records",
                    ref="C",
                ),
            ],
            unit="ops",
            description="Refused at the door (memory limiter): the SDKs retry these.",
        ),
        8,
        8,
    )

    service = variable_query(
        "service", "service", "label_values(service_name)", default="platform-api", datasource=LOKI
    )
    text_filter = {
        "type": "textbox",
        "name": "filter",
        "label": "line contains",
        "query": "",
        "current": {"text": "", "value": ""},
        "hide": 0,
        "options": [],
    }
    return dashboard(
        "platform-logs-traces",
        "Platform / Logs and traces",
        "Log volume and lines from Loki, error and slow traces from Tempo, telemetry pipeline health.",
        lay,
        [service, text_filter],
    )


DASHBOARDS = {
    "platform-overview.json": overview,
    "platform-runtime.json": runtime,
    "platform-dependencies.json": dependencies,
    "platform-logs-traces.json": logs_traces,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as written to grafana/dashboards/."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
