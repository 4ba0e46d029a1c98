"""init_telemetry: resource, views, exemplars, own instruments, Flask, failing exporters, the global path."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import flask
import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.domain.context import RequestContext, bind
from app.settings import Settings, load_settings
from app.telemetry import logging as tlog
from app.telemetry.setup import (
    DURATION_BUCKETS_S,
    LAG_BUCKETS_S,
    Telemetry,
    build_resource,
    init_telemetry,
    instrument_flask_app,
)
from tests.conftest import ROOT, free_port, wait_until
from tests.unit.conftest import settings_env

OTLP_VARS = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "PROMETHEUS_MULTIPROC_DIR",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTLP_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def settings() -> Settings:
    return load_settings(settings_env(service_version="1.2.3", git_commit="abc123"))


@pytest.fixture
def make_telemetry(clean_env: pytest.MonkeyPatch, settings: Settings) -> Iterator[Callable[..., Telemetry]]:
    built: list[Telemetry] = []

    def make(**kwargs: Any) -> Telemetry:
        telemetry = init_telemetry(settings, set_global=False, **kwargs)
        built.append(telemetry)
        return telemetry

    yield make
    for telemetry in built:
        telemetry.shutdown(2.0)


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data: MetricsData | None = reader.get_metrics_data()
    found: list[Any] = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_resource_identifies_service_and_worker(make_telemetry: Callable[..., Telemetry]) -> None:
    spans = InMemorySpanExporter()
    telemetry = make_telemetry(span_exporter=spans)
    attributes = dict(telemetry.resource.attributes)
    assert attributes["service.name"] == "platform-api"
    assert attributes["service.namespace"] == "platform"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["deployment.environment"] == "test"
    assert uuid.UUID(telemetry.instance_id).version == 4
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("op"):
        pass
    (span,) = spans.get_finished_spans()
    assert span.resource.attributes["service.instance.id"] == telemetry.instance_id


def test_otel_variables_override_our_resource(clean_env: pytest.MonkeyPatch, settings: Settings) -> None:
    clean_env.setenv("OTEL_SERVICE_NAME", "quotes-upstream")
    clean_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,team=core")
    attributes = build_resource(settings, "platform-api").attributes
    assert attributes["service.name"] == "quotes-upstream"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["team"] == "core"
    assert attributes["service.namespace"] == "platform"


def _child_instance_id(settings: Settings, queue: Any) -> None:
    queue.put(build_resource(settings).attributes["service.instance.id"])


def test_each_forked_worker_gets_its_own_instance_id(settings: Settings) -> None:
    parent = build_resource(settings).attributes["service.instance.id"]
    assert build_resource(settings).attributes["service.instance.id"] == parent  # stable within a process
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_child_instance_id, args=(settings, queue)) for _ in range(2)]
    for child in children:
        child.start()
    ids = {queue.get(timeout=10) for _ in children}
    for child in children:
        child.join(10)
    assert len(ids) == 2 and parent not in ids


def test_views_exemplars_and_own_instruments(make_telemetry: Callable[..., Telemetry]) -> None:
    reader = InMemoryMetricReader()
    telemetry = make_telemetry(metric_readers=[reader])
    meter = telemetry.meter_provider.get_meter("test")
    duration = meter.create_histogram("rpc.server.call.duration", unit="s")
    lag = meter.create_histogram("platform.eventloop.delay", unit="s")
    body = meter.create_histogram("http.client.request.body.size", unit="By")
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("call") as span:
        duration.record(0.2, {"rpc.method": "GetItem"})
    duration.record(0.3, {"rpc.method": "PutItem"})  # no span: no exemplar (trace-based filter)
    lag.record(0.004, {"loop": "grpc"})
    body.record(100)

    by_method = {p.attributes["rpc.method"]: p for p in points(reader, "rpc.server.call.duration")}
    assert tuple(by_method["GetItem"].explicit_bounds) == DURATION_BUCKETS_S
    (exemplar,) = [e for e in by_method["GetItem"].exemplars if e.value == 0.2]
    assert exemplar.trace_id == span.get_span_context().trace_id
    assert by_method["PutItem"].exemplars == []
    (lag_point,) = points(reader, "platform.eventloop.delay")
    assert isinstance(lag_point, HistogramDataPoint) and tuple(lag_point.explicit_bounds) == LAG_BUCKETS_S
    assert points(reader, "http.client.request.body.size") == []  # not in the contract: dropped

    (workers,) = points(reader, "platform.workers")
    assert workers.value == 1
    (build,) = points(reader, "platform.build.info")
    assert (build.value, dict(build.attributes)) == (1, {"version": "1.2.3", "commit": "abc123"})
    failures = {p.attributes["signal"]: p.value for p in points(reader, "platform.telemetry.export.failures")}
    assert failures == {"traces": 0, "metrics": 0, "logs": 0}


def test_without_endpoint_nothing_is_exported_or_queued(
    make_telemetry: Callable[..., Telemetry], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    telemetry = make_telemetry()
    assert telemetry.logger_provider is None
    assert telemetry._exporters == []
    assert telemetry.prometheus_reader is None
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("op") as span:
        assert span.get_span_context().is_valid  # ids for logs and exemplars even without export
    assert telemetry.shutdown(1.0)
    assert caplog.records == []


def test_prometheus_reader_writes_the_multiproc_dir(
    make_telemetry: Callable[..., Telemetry], tmp_path: Any
) -> None:
    from app.telemetry.prometheus_bridge import render_metrics

    telemetry = make_telemetry(prometheus_multiproc_dir=str(tmp_path), prometheus_export_interval_s=0.05)
    assert telemetry.prometheus_reader is not None
    body = wait_until(
        lambda: (
            (text := render_metrics(str(tmp_path))[0].decode()) and "platform_workers 1.0" in text and text
        ),
        message="the bridge reader to export",
    )
    assert 'platform_build_info{commit="abc123",version="1.2.3"} 1.0' in body
    assert 'platform_telemetry_export_failures_total{signal="traces"} 0.0' in body


# -- Flask -----------------------------------------------------------------------------------------


def test_flask_server_spans_metrics_exclusions_and_access_log_stash(
    make_telemetry: Callable[..., Telemetry],
) -> None:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = make_telemetry(span_exporter=spans, metric_readers=[reader])
    app = flask.Flask("test")
    bound: dict[str, Any] = {}

    @app.before_request
    def bind_request() -> None:
        bound["cm"] = bind(RequestContext(request_id="rid-1", user="carol", transport="http"))
        bound["cm"].__enter__()

    @app.teardown_request
    def unbind_request(_exc: BaseException | None) -> None:
        bound.pop("cm").__exit__(None, None, None)

    @app.get("/v1/items/<key>")
    def get_item(key: str) -> dict[str, str]:
        return {"key": key}

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    instrument_flask_app(
        app, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    environs: list[dict[str, Any]] = []
    instrumented = app.wsgi_app

    def keep_environ(environ: dict[str, Any], start_response: Any) -> Any:
        environs.append(environ)
        return instrumented(environ, start_response)

    app.wsgi_app = keep_environ  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/v1/items/abc").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/items/metrics").status_code == 200  # only the real /metrics is excluded

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    assert [s.name for s in finished] == ["GET /v1/items/<key>", "GET /v1/items/<key>"]
    server = finished[0]
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None and server.attributes["http.route"] == "/v1/items/<key>"
    (point,) = points(reader, "http.server.request.duration")
    assert point.count == 2 and tuple(point.explicit_bounds) == DURATION_BUCKETS_S
    assert point.attributes["http.route"] == "/v1/items/<key>"

    request_context, span_context = environs[0][tlog.ENVIRON_LOG_CONTEXT]
    assert (request_context.request_id, request_context.user) == ("rid-1", "carol")
    assert span_context.trace_id == server.context.trace_id
    assert tlog.ENVIRON_LOG_CONTEXT not in environs[1]  # excluded: no work at all (access log uses headers)


# -- a collector that is down ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_dead_endpoint_is_counted_and_reported_once_per_signal(
    make_telemetry: Callable[..., Telemetry],
    clean_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    clean_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    clean_env.setenv("OTEL_BLRP_SCHEDULE_DELAY", "20")
    clean_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
    caplog.set_level(logging.INFO)
    reader = InMemoryMetricReader()
    telemetry = make_telemetry(metric_readers=[reader])
    assert len(telemetry._exporters) == 3
    tracer = telemetry.tracer_provider.get_tracer("t")
    log = logging.getLogger("app.requests")

    def burst(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            with tracer.start_as_current_span("request"):
                log.info("served %d", i)
        return time.perf_counter() - started

    assert burst(200) < 1.0  # requests are not slowed by the dead collector

    def failed(signal: str) -> float:
        return sum(
            float(p.value)
            for p in points(reader, "platform.telemetry.export.failures")
            if p.attributes["signal"] == signal
        )

    signals = ("traces", "metrics", "logs")
    wait_until(lambda: all(failed(s) >= 1 for s in signals), timeout=30, message="a failure per signal")
    burst(200)  # more batches fail, within the same report interval
    wait_until(lambda: all(failed(s) >= 2 for s in signals), timeout=30, message="more failures")

    reports = [r for r in caplog.records if r.name == "app.telemetry.export"]
    assert sorted(r.__dict__["signal"] for r in reports) == [
        "logs",
        "metrics",
        "traces",
    ]  # one each, not per batch
    assert all("telemetry export failing" in r.getMessage() for r in reports)
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []
    assert [r.getMessage() for r in caplog.records if r.name == "app.requests"][:1] == ["served 0"]

    started = time.monotonic()
    telemetry.shutdown(1.5)
    assert time.monotonic() - started < 2.5


def test_failure_reporter_logs_once_per_interval_per_signal(caplog: pytest.LogCaptureFixture) -> None:
    from app.telemetry.exporters import FailureReporter

    now = [100.0]
    reporter = FailureReporter(interval_s=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="app.telemetry.export")
    for _ in range(5):
        reporter.failed("traces", "UNAVAILABLE")
    reporter.failed("logs")
    now[0] += 59
    reporter.failed("traces")
    now[0] += 2
    reporter.failed("traces", "still down")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert (
        messages[0].startswith("telemetry export failing: 1 traces batch(es)")
        and "UNAVAILABLE" in messages[0]
    )
    assert messages[1].startswith("telemetry export failing: 1 logs batch(es)")
    assert (
        messages[2].startswith("telemetry export failing: 6 traces batch(es)") and "still down" in messages[2]
    )


# -- the global path, in a process of its own ------------------------------------------------------

GLOBAL_SCRIPT = r"""
import http.server, json, os, sys, threading
import redis, urllib3
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from app.settings import load_settings
from app.telemetry.setup import init_telemetry

class Quote(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args): pass

server = http.server.HTTPServer(("127.0.0.1", 0), Quote)
threading.Thread(target=server.serve_forever, daemon=True).start()
spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
telemetry = init_telemetry(load_settings(), span_exporter=spans, metric_readers=[reader])
try:
    init_telemetry(load_settings())
    second = ""
except RuntimeError as exc:
    second = str(exc)
urllib3.PoolManager().request("GET", f"http://127.0.0.1:{server.server_port}/v1/quotes/ACME", timeout=5)
client = redis.Redis.from_url(sys.argv[1], socket_timeout=2)
client.set("k", "v")
data = reader.get_metrics_data()
metrics_seen = {}
for rm in data.resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            metrics_seen[m.name] = [dict(p.attributes or {}) for p in m.data.data_points]
print(json.dumps({
    "global": trace.get_tracer_provider() is telemetry.tracer_provider
        and metrics.get_meter_provider() is telemetry.meter_provider,
    "second": second,
    "semconv": os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN"),
    "metrics": metrics_seen,
    "spans": [[s.name, s.kind.name, dict(s.attributes or {})] for s in spans.get_finished_spans()],
    "instance": telemetry.instance_id,
}))
telemetry.shutdown(2.0)
"""

CONTRACT_METRICS_OF_SETUP = {
    "platform.workers",
    "platform.build.info",
    "platform.telemetry.export.failures",
    "process.cpu.time",
    "process.memory.usage",
    "process.thread.count",
    "cpython.gc.collections",
    "http.client.request.duration",
}


def test_global_setup_instruments_urllib3_redis_and_process_metrics(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in OTLP_VARS and k != "OTEL_SEMCONV_STABILITY_OPT_IN"}
    env.update(settings_env(), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", GLOBAL_SCRIPT, redis_url],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["global"] is True
    assert "once per worker" in report["second"]
    assert report["semconv"] == "http"
    assert set(report["metrics"]) == CONTRACT_METRICS_OF_SETUP  # nothing outside the contract
    assert [sorted(a) for a in report["metrics"]["process.cpu.time"]] == [["cpu.mode"], ["cpu.mode"]]
    assert {a["cpu.mode"] for a in report["metrics"]["process.cpu.time"]} == {"user", "system"}
    assert {tuple(a) for a in report["metrics"]["cpython.gc.collections"]} == {("cpython.gc.generation",)}
    for name in ("process.memory.usage", "process.thread.count", "platform.workers"):
        assert report["metrics"][name] == [{}]
    (client_point,) = report["metrics"]["http.client.request.duration"]
    assert client_point["http.response.status_code"] == 200
    kinds = {(name, kind) for name, kind, _ in report["spans"]}
    assert ("GET", "CLIENT") in kinds  # urllib3
    (redis_span,) = [attrs for name, _, attrs in report["spans"] if name == "SET"]
    assert redis_span["db.system"] == "redis"
    assert "v" not in str(redis_span.get("db.statement", ""))  # values are not recorded
    assert uuid.UUID(report["instance"]).version == 4
