"""Service overview dashboard: RED for HTTP and gRPC, the availability SLO and its error budget, alerts."""

from __future__ import annotations

from .panels import Layout, bargauge, dashboard, heatmap, instance_var, job_var, stat, timeseries
from .queries import JOB, RI, SEL, Json, or_zero, prom, quantiles

SLO_BUDGET = 0.005  # docs/slo.md: 99.5% of requests succeed
LATENCY_THRESHOLD_S = 0.5  # docs/slo.md: p99 alert threshold


def build() -> Json:
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
