"""The SDK's OTLP span and log exporters (grpc and http/protobuf), fed by app.telemetry.otlp_encoding.

Everything except the encoding is the SDK's own: configuration from the OTEL_EXPORTER_OTLP_* variables,
TLS, headers, compression, timeouts, retries with backoff, the request-size guard. Only the step that turns
a batch into protobuf bytes is replaced: gRPC gets a stub whose serializer passes bytes through, and the
http exporters' export() (copied from opentelemetry-exporter-otlp-proto-http 1.45.1, pinned in
pyproject.toml) calls our encoder instead of building protobuf objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as _GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as _GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as _HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as _HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from app.telemetry.otlp_encoding import encode_logs, encode_spans

_log = logging.getLogger(__name__)

_TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def _as_is(data: bytes) -> bytes:
    return data


def _raw_stub(method: str, response: Any) -> Callable[[Any], Any]:
    """A stub class stand-in: `stub(channel).Export(request=bytes, ...)` sends the bytes unchanged."""

    class RawStub:
        def __init__(self, channel: Any) -> None:
            self.Export = channel.unary_unary(
                method, request_serializer=_as_is, response_deserializer=response.FromString
            )

    return RawStub


def _use_raw_stub(exporter: Any, stub: Callable[[Any], Any]) -> None:
    # The base class made a channel with the protobuf stub; channels connect lazily, so replacing it before
    # the first export costs nothing. Reconnects (after UNAVAILABLE) build their stub from self._stub.
    if exporter._channel is not None:
        exporter._channel.close()
    exporter._stub = stub
    exporter._initialize_channel_and_stub()


class GrpcSpanExporter(_GrpcSpanExporter):
    def __init__(self) -> None:
        super().__init__()
        _use_raw_stub(self, _raw_stub(_TRACE_EXPORT, ExportTraceServiceResponse))

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return encode_spans(data)  # bytes, which the raw stub sends unchanged


class GrpcLogExporter(_GrpcLogExporter):
    def __init__(self) -> None:
        super().__init__()
        _use_raw_stub(self, _raw_stub(_LOGS_EXPORT, ExportLogsServiceResponse))

    def _translate_data(self, data: Sequence[ReadableLogRecord]) -> bytes:  # type: ignore[override]
        return encode_logs(data)


def _http_export(exporter: Any, batch: Sequence[Any], payload: bytes, signal: str) -> bool:
    """The body of the SDK's http export(), after encoding: size guard, send, bookkeeping."""
    with exporter._metrics.export_operation(len(batch)) as result:
        if _is_request_too_large(payload, exporter._max_request_size):
            _log.warning(
                "Dropping %s batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                signal,
                len(payload),
                exporter._max_request_size,
            )
            result.error = RequestPayloadTooLargeError(
                f"{signal} request of {len(payload)} bytes is too large"
            )
            return False
        export_result = exporter._client.export(payload)
        if not export_result.success:
            result.error = export_result.error
            if export_result.status_code is not None:
                result.error_attrs = {"http.response.status_code": export_result.status_code}
            return False
    return True


class HttpSpanExporter(_HttpSpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        ok = _http_export(self, spans, encode_spans(spans), "span")
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class HttpLogExporter(_HttpLogExporter):
    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self._shutdown:
            return LogRecordExportResult.FAILURE
        ok = _http_export(self, batch, encode_logs(batch), "logs")
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE
