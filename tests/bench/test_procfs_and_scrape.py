"""/proc parsing, and the service's own counts read from /metrics text."""

from __future__ import annotations

import pytest

from bench.procfs import cpu_seconds_from_stat, rss_bytes_from_status
from bench.scrape import ServedCounts, families, total

STAT = "4242 (python -m app (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 100 1 2 3"

METRICS = """\
# HELP http_server_request_duration_seconds Duration of HTTP server requests.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_response_status_code="200",le="+Inf"} 900.0
http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200"} 900.0
http_server_request_duration_seconds_sum{http_request_method="GET",http_response_status_code="200"} 1.5
http_server_request_duration_seconds_count{http_request_method="PUT",http_response_status_code="200"} 1.0
http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="429"} 3.0
# HELP rpc_server_call_duration_seconds Duration of inbound gRPC calls
# TYPE rpc_server_call_duration_seconds histogram
rpc_server_call_duration_seconds_count{rpc_grpc_status_code="0",rpc_method="GetItem"} 2000.0
rpc_server_call_duration_seconds_count{rpc_grpc_status_code="16",rpc_method="GetItem"} 20.0
# HELP otel_sdk_span_started_total Spans started
# TYPE otel_sdk_span_started_total counter
otel_sdk_span_started_total{otel_span_sampling_result="RECORD_AND_SAMPLE"} 91.0
otel_sdk_span_started_total{otel_span_sampling_result="DROP"} 810.0
"""


def test_cpu_seconds_count_fields_after_the_command_name() -> None:
    assert cpu_seconds_from_stat(STAT, ticks_per_s=100) == pytest.approx(3.0)


def test_rss_from_status() -> None:
    assert rss_bytes_from_status("Name:\tpython\nVmRSS:\t   80000 kB\nThreads:\t9\n") == 80000 * 1024
    with pytest.raises(ValueError, match="no VmRSS"):
        rss_bytes_from_status("Name:\tzombie\n")


def test_served_counts_split_success_from_everything_else() -> None:
    counts = ServedCounts.from_metrics(METRICS)
    assert counts == ServedCounts(901, 3, 2000, 20, counted=frozenset({"http", "grpc"}))
    assert (counts.ok("grpc"), counts.not_ok("http")) == (2000, 3)


def test_totals_and_families() -> None:
    sampled = total(
        METRICS,
        "otel_sdk_span_started_total",
        lambda labels: labels["otel_span_sampling_result"] == "RECORD_AND_SAMPLE",
    )
    assert sampled == 91
    assert {"http_server_request_duration_seconds", "rpc_server_call_duration_seconds"} <= families(METRICS)
    assert ServedCounts.from_metrics("") == ServedCounts(0, 0, 0, 0, counted=frozenset())
