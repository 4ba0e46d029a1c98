"""A real OTLP/gRPC receiver for tests: the service exports to it over a socket, tests read what arrived."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@dataclass
class Span:
    resource: dict[str, Any]
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int


@dataclass
class LogRecord:
    resource: dict[str, Any]
    scope: str
    trace_id: str  # hex; all zeros outside a trace
    span_id: str
    body: str
    attributes: dict[str, Any]


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metrics: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (resource, metric name)
    logs: list[LogRecord] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # every export request as received, all signals
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Trace(trace_grpc.TraceServiceServicer):
    def __init__(self, rx: Received) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        with self.rx.lock:
            for rs in request.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.rx.spans.append(
                            Span(
                                res,
                                s.name,
                                s.kind,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                attrs(s.attributes),
                                s.status.code,
                            )
                        )
            self.rx.raw.append(request.SerializeToString())
        return trace_pb.ExportTraceServiceResponse()


class _Metrics(metrics_grpc.MetricsServiceServicer):
    def __init__(self, rx: Received) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        with self.rx.lock:
            for rm in request.resource_metrics:
                res = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self.rx.metrics.append((res, m.name))
            self.rx.raw.append(request.SerializeToString())
        return metrics_pb.ExportMetricsServiceResponse()


class _Logs(logs_grpc.LogsServiceServicer):
    def __init__(self, rx: Received) -> None:
        self.rx = rx

    def Export(self, request: Any, context: Any) -> Any:
        with self.rx.lock:
            for rl in request.resource_logs:
                res = attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        self.rx.logs.append(
                            LogRecord(
                                res,
                                sl.scope.name,
                                r.trace_id.hex(),
                                r.span_id.hex(),
                                r.body.string_value,
                                attrs(r.attributes),
                            )
                        )
            self.rx.raw.append(request.SerializeToString())
        return logs_pb.ExportLogsServiceResponse()


class OtlpReceiver:
    """On a free port, or on `port` (to bring back an endpoint that was down)."""

    def __init__(self, port: int = 0) -> None:
        self.received = Received()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_grpc.add_TraceServiceServicer_to_server(_Trace(self.received), self._server)
        metrics_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.received), self._server)
        logs_grpc.add_LogsServiceServicer_to_server(_Logs(self.received), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=1).wait(5)
