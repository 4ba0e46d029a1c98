"""Logs and traces dashboard: log volume and lines from Loki, error and slow traces from Tempo, and the
health of the telemetry pipeline (SDK exporters, collector)."""

from __future__ import annotations

from .panels import Layout, dashboard, table, timeseries, variable_query
from .queries import LOKI, RI, TEMPO, Json, loki, prom, traceql


def build() -> Json:
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
    lost = f'{job}, error_type!=""'
    lay.add(
        timeseries(
            "Telemetry the service lost",
            [
                prom(
                    f"sum(rate(otel_sdk_exporter_span_exported_total{{{lost}}}[{RI}])) or on () vector(0)",
                    "spans: export failed",
                    ref="A",
                ),
                prom(
                    f"sum(rate(otel_sdk_processor_span_processed_total{{{lost}}}[{RI}])) or on () vector(0)",
                    "spans: queue full",
                    ref="B",
                ),
                prom(
                    f"sum(rate(otel_sdk_exporter_log_exported_total{{{lost}}}[{RI}])) "
                    f"+ sum(rate(otel_sdk_processor_log_processed_total{{{lost}}}[{RI}])) or on () vector(0)",
                    "log records",
                    ref="C",
                ),
                prom(
                    f"sum(rate(otel_sdk_exporter_metric_data_point_exported_total{{{lost}}}[{RI}])) "
                    "or on () vector(0)",
                    "metric points: export failed",
                    ref="D",
                ),
            ],
            unit="ops",
            description="Items the service's OpenTelemetry SDK dropped (full queue) or failed to deliver "
            "to the collector, from the SDK's own otel.sdk.* metrics.",
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
