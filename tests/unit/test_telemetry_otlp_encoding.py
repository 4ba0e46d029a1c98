"""The hand-written OTLP encoder gives the same messages as the SDK's encoder, for every field it sets."""

from __future__ import annotations

import gzip
import http.server
import logging
import threading
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from app.settings import load_settings
from app.telemetry import otlp_encoding
from app.telemetry.setup import Telemetry, init_telemetry
from tests.conftest import wait_until
from tests.unit.conftest import settings_env

RESOURCE_A = Resource.create({"service.name": "a", "service.namespace": "platform", "k8s.replicas": 3})
RESOURCE_B = Resource(
    {"service.name": "b", "flag": True}, schema_url="https://opentelemetry.io/schemas/1.30.0"
)
VALUES: dict[str, AttributeValue] = {
    "str": "value",
    "empty": "",
    "int": 42,
    "zero": 0,
    "negative": -7,
    "big": 2**62,
    "float": 0.25,
    "true": True,
    "false": False,
    "strings": ("a", "b"),
    "ints": (1, -2, 3),
    "floats": (0.5, 1.5),
    "bools": (True, False),
    "unicode": "grüße ✓",
}


def make_spans() -> list[ReadableSpan]:
    spans = InMemorySpanExporter()
    for resource in (RESOURCE_A, RESOURCE_B):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(spans))
        plain = provider.get_tracer("plain")
        scoped = provider.get_tracer(
            "scoped",
            "1.2.3",
            schema_url="https://opentelemetry.io/schemas/1.21.0",
            attributes={"scope.attr": "x"},
        )
        remote = SpanContext(
            0x1234,
            0x5678,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState([("vendor", "v1"), ("other", "o")]),
        )
        link_context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        with plain.start_as_current_span("root", kind=SpanKind.SERVER, attributes=VALUES) as root:
            root.add_event("cache.miss", {"key.count": 3, "keys": ("a", "b")})
            root.add_event("empty")
            with scoped.start_as_current_span(
                "child", kind=SpanKind.CLIENT, links=[Link(link_context, {"why": "batch"})]
            ):
                pass
            root.set_status(Status(StatusCode.ERROR, "boom"))
        with plain.start_as_current_span(
            "remote-child", context=set_span_in_context(NonRecordingSpan(remote))
        ) as span:
            span.set_status(Status(StatusCode.OK))
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            with scoped.start_as_current_span(f"kind-{kind.name}", kind=kind):
                pass
    return list(spans.get_finished_spans())


def make_logs() -> list[ReadableLogRecord]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=RESOURCE_A)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("app.test", "0.1")
    tracer = TracerProvider().get_tracer("t")
    from opentelemetry._logs import LogRecord, SeverityNumber

    logger.emit(
        LogRecord(body="plain", severity_number=SeverityNumber.INFO, severity_text="INFO", attributes=VALUES)
    )
    with tracer.start_as_current_span("s"):
        logger.emit(
            LogRecord(
                body={"event": "login", "n": 2, "nested": {"a": [1, "x"]}},
                severity_number=SeverityNumber.WARN,
            )
        )
    logger.emit(LogRecord(body=None, event_name="app.started"))
    logger.emit(LogRecord(body=17, attributes={"bytes": b"\x00\x01"}))
    return list(exporter.get_finished_logs())


def test_spans_encode_like_the_sdk() -> None:
    spans = make_spans()
    ours = ExportTraceServiceRequest.FromString(otlp_encoding.encode_spans(spans))
    assert ours == sdk_encode_spans(spans)
    assert len(ours.resource_spans) == 2


def test_logs_encode_like_the_sdk() -> None:
    records = make_logs()
    ours = ExportLogsServiceRequest.FromString(otlp_encoding.encode_logs(records))
    assert ours == sdk_encode_logs(records)


def test_unencodable_attribute_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    provider = TracerProvider(resource=RESOURCE_A)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with provider.get_tracer("t").start_as_current_span("s", attributes={"huge": 2**70, "ok": 1}):
        pass
    caplog.set_level(logging.CRITICAL)
    (span,) = (
        ExportTraceServiceRequest.FromString(otlp_encoding.encode_spans(spans.get_finished_spans()))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    assert [kv.key for kv in span.attributes] == ["ok"]


def test_empty_batch() -> None:
    assert otlp_encoding.encode_spans([]) == b""
    assert ExportTraceServiceRequest.FromString(b"") == sdk_encode_spans([])


# -- the exporters that use the encoder, against real receivers -------------------------------------------


class HttpOtlpReceiver:
    """OTLP/HTTP on a real socket: keeps the decoded requests per path."""

    def __init__(self) -> None:
        received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/logs": [], "/v1/metrics": []}
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _emit(telemetry: Telemetry) -> int:
    log = logging.getLogger("app.otlp.test")
    with telemetry.tracer_provider.get_tracer("t").start_as_current_span("work", attributes={"n": 1}) as span:
        log.warning("inside %s", "work")
    assert telemetry.force_flush(10)
    return span.get_span_context().trace_id


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    return monkeypatch


def test_grpc_exporters_deliver_to_a_receiver(otlp_env: pytest.MonkeyPatch) -> None:
    from tests.e2e.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    telemetry = init_telemetry(load_settings(settings_env()), set_global=False)
    try:
        trace_id = _emit(telemetry)
        spans = wait_until(lambda: receiver.received.spans, message="the span at the receiver")
        assert spans[0].name == "work" and spans[0].trace_id == format(trace_id, "032x")
        assert spans[0].resource["service.instance.id"] == telemetry.instance_id
        logs = wait_until(lambda: receiver.received.logs, message="the log record at the receiver")
        assert any("inside work" in str(entry) for entry in logs)
    finally:
        telemetry.shutdown(2)
        receiver.stop()


def test_http_exporters_deliver_to_a_receiver(otlp_env: pytest.MonkeyPatch) -> None:
    receiver = HttpOtlpReceiver()
    otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = init_telemetry(load_settings(settings_env()), set_global=False)
    try:
        trace_id = _emit(telemetry)
        (body,) = wait_until(lambda: receiver.received["/v1/traces"], message="the span at the receiver")
        (span,) = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
        assert span.name == "work" and span.trace_id == trace_id.to_bytes(16, "big")
        (logs_body,) = wait_until(lambda: receiver.received["/v1/logs"], message="the log at the receiver")
        records = ExportLogsServiceRequest.FromString(logs_body).resource_logs[0].scope_logs[0].log_records
        assert [r.body.string_value for r in records] == ["inside work"]
        assert records[0].trace_id == trace_id.to_bytes(16, "big")
    finally:
        telemetry.shutdown(2)
        receiver.stop()
