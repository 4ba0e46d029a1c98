"""A counting OTLP/gRPC receiver, run as a process of its own so that it shares no GIL with the bench.

The exporting variants send their traces, metrics and logs here, over a real socket, as they would to a
collector. It keeps counts only (spans and server spans per instrumentation scope, data points per
metric, log records per scope, export calls per signal), which costs far less CPU on the shared cores than
keeping every item as tests/e2e/otlp_receiver.py does.

    python -m bench.otlp_sink    # prints `port N`; then answers each `counts` line on stdin with JSON

It stops at `stop` or at the end of its stdin (the bench went away).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field, fields
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.processes import Child, read_line

SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER


@dataclass
class Received:
    """What arrived, counted; `a - b` is what arrived in between."""

    exports: Counter[str] = field(default_factory=Counter)  # signal -> export calls
    spans: Counter[str] = field(default_factory=Counter)  # scope -> spans
    server_spans: Counter[str] = field(default_factory=Counter)  # scope -> spans of kind SERVER
    points: Counter[str] = field(default_factory=Counter)  # metric name -> data points
    logs: Counter[str] = field(default_factory=Counter)  # scope -> log records

    def __sub__(self, other: Received) -> Received:
        return Received(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def to_json(self) -> str:
        return json.dumps({f.name: dict(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> Received:
        data = json.loads(text)
        return cls(**{f.name: Counter(data.get(f.name, {})) for f in fields(cls)})

    @property
    def nothing(self) -> bool:
        return not any(getattr(self, f.name).total() for f in fields(self))


class _Counting:
    def __init__(self, received: Received, lock: threading.Lock) -> None:
        self.received = received
        self.lock = lock


class _Traces(_Counting, trace_grpc.TraceServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.received.exports["traces"] += 1
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    scope = scope_spans.scope.name
                    self.received.spans[scope] += len(scope_spans.spans)
                    self.received.server_spans[scope] += sum(s.kind == SERVER for s in scope_spans.spans)
        return trace_pb.ExportTraceServiceResponse()


class _Metrics(_Counting, metrics_grpc.MetricsServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.received.exports["metrics"] += 1
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        data = metric.WhichOneof("data")
                        self.received.points[metric.name] += len(getattr(metric, data).data_points)
        return metrics_pb.ExportMetricsServiceResponse()


class _Logs(_Counting, logs_grpc.LogsServiceServicer):
    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.received.exports["logs"] += 1
            for resource_logs in request.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    self.received.logs[scope_logs.scope.name] += len(scope_logs.log_records)
        return logs_pb.ExportLogsServiceResponse()


def serve() -> None:
    received, lock = Received(), threading.Lock()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_grpc.add_TraceServiceServicer_to_server(_Traces(received, lock), server)
    metrics_grpc.add_MetricsServiceServicer_to_server(_Metrics(received, lock), server)
    logs_grpc.add_LogsServiceServicer_to_server(_Logs(received, lock), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    for line in sys.stdin:
        if line.strip() != "counts":
            break
        with lock:
            print(received.to_json(), flush=True)
    server.stop(grace=1).wait(5)


class OtlpSink:
    """The bench's side of a running `python -m bench.otlp_sink`."""

    def __init__(self, child: Child) -> None:
        self.child = child
        first = read_line(child.popen.stdout, "the OTLP receiver")
        self.port = int(first.removeprefix("port "))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> Received:
        stdin = self.child.popen.stdin
        assert stdin is not None
        stdin.write(b"counts\n")
        stdin.flush()
        return Received.from_json(read_line(self.child.popen.stdout, "the OTLP receiver"))


if __name__ == "__main__":
    serve()
