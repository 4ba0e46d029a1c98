"""Dependencies and resilience dashboard: circuit breaker, retries, upstream calls, rate limiting, caches,
Redis and the Tempo service graph."""

from __future__ import annotations

from .panels import Layout, dashboard, instance_var, job_var, thresholds, timeseries
from .queries import PROM, RI, SEL, TEMPO, Json, or_zero, prom, quantiles


def build() -> Json:
    lay = Layout()
    client = "http_client_request_duration_seconds"
    redis = "db_client_operation_duration_seconds"
    breaker = "platform_circuit_breaker_state"

    lay.row("Circuit breaker and retries (quotes upstream)")
    state = {
        "type": "state-timeline",
        "title": "Circuit breaker state",
        "description": "Each worker's breaker (one row per worker, `instance`): closed, half_open (probing) "
        "or open. Every worker decides from its own calls, so they can differ for a while.",
        "datasource": PROM,
        "targets": [
            prom(
                f'max by (name, instance) ({breaker}{{{SEL}, state="open"}} * 2 or {breaker}{{{SEL}, '
                f'state="half_open"}}'
                f' or {breaker}{{{SEL}, state="closed"}} * 0)',
                "{{name}} {{instance}}",
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
