"""What the gRPC server tells OpenTelemetry: the call-duration histogram, server spans, trace context."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.rpc.interceptors import DURATION_METRIC, SERVICE_NAME
from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.server import GrpcServer
from app.telemetry.buckets import DURATION_BUCKETS_S as DURATION_BUCKETS
from tests.conftest import wait_until
from tests.unit.conftest import Metrics
from tests.unit.rpc.support import INSTANCE_ID, RpcStack, call_error, rpc_stack

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def stack(redis_server: str) -> Iterator[RpcStack]:
    with rpc_stack(redis_server, start_pool=False) as s:
        yield s


def calls(metric_values: Metrics, method: str, code: grpc.StatusCode) -> float:
    return metric_values.value(
        DURATION_METRIC,
        **{
            "rpc.system": "grpc",
            "rpc.service": SERVICE_NAME,
            "rpc.method": method,
            "rpc.grpc.status_code": code.value[0],
        },
    )


@pytest.mark.parametrize(
    ("method", "request_msg", "scopes", "code"),
    [
        ("GetQuote", pb.GetQuoteRequest(symbol="ACME"), ("read",), grpc.StatusCode.OK),
        ("GetItem", pb.GetItemRequest(key="never-written-telemetry"), ("read",), grpc.StatusCode.NOT_FOUND),
        ("GetItem", pb.GetItemRequest(key="bad key"), ("read",), grpc.StatusCode.INVALID_ARGUMENT),
        ("PutItem", pb.PutItemRequest(key="k"), ("read",), grpc.StatusCode.PERMISSION_DENIED),
        ("Sign", pb.SignRequest(message=b"m"), (), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_call_duration_is_recorded_with_method_and_status(
    stack: RpcStack, metric_values: Metrics, method: str, request_msg: Any, scopes: tuple[str, ...], code: Any
) -> None:
    before = calls(metric_values, method, code)
    metadata = stack.md(*scopes) if scopes else ()
    rpc = getattr(stack.stub, method)
    if code == grpc.StatusCode.OK:
        rpc(request_msg, metadata=metadata, timeout=5)
    else:
        assert call_error(lambda: rpc(request_msg, metadata=metadata, timeout=5)).code() == code
    assert calls(metric_values, method, code) == before + 1


def test_call_duration_histogram_shape(stack: RpcStack, metric_values: Metrics) -> None:
    stack.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=stack.md("read"), timeout=5)
    points = [p for attrs, p in metric_values.points(DURATION_METRIC) if attrs["rpc.method"] == "GetQuote"]
    assert points
    assert tuple(points[0].explicit_bounds) == DURATION_BUCKETS
    assert 0 < points[0].sum / points[0].count < 5  # seconds, not milliseconds


def test_a_cancelled_stream_is_recorded_as_cancelled(stack: RpcStack, metric_values: Metrics) -> None:
    before = calls(metric_values, "WatchQuotes", grpc.StatusCode.CANCELLED)
    stream = stack.stub.WatchQuotes(
        pb.WatchQuotesRequest(symbol="ACME", count=100, interval_ms=100),
        metadata=stack.md("read"),
        timeout=30,
    )
    next(stream)
    stream.cancel()
    # The server-side handler really stopped: its duration was recorded with CANCELLED.
    wait_until(
        lambda: calls(metric_values, "WatchQuotes", grpc.StatusCode.CANCELLED) == before + 1,
        timeout=5,
        message="the cancelled WatchQuotes to be recorded",
    )


def test_traceparent_in_metadata_continues_the_trace(stack: RpcStack, spans: InMemorySpanExporter) -> None:
    md = (*stack.md("read"), ("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
    stack.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=md, timeout=5)

    server = wait_until(lambda: _span(spans, f"/{SERVICE_NAME}/GetQuote"), message="the server span")
    assert server.kind == SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    assert server.attributes["rpc.grpc.status_code"] == 0
    # The OpenTelemetry context crossed into the handler thread: the domain's span is a child.
    fetch = _span(spans, "quotes.fetch")
    assert fetch is not None and fetch.parent is not None
    assert fetch.parent.span_id == server.context.span_id


def test_client_errors_leave_the_span_unset_and_server_faults_mark_it(
    stack: RpcStack, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    err = call_error(
        lambda: stack.stub.GetItem(pb.GetItemRequest(key="bad key"), metadata=stack.md(), timeout=5)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    client_fault = wait_until(lambda: _span(spans, f"/{SERVICE_NAME}/GetItem"), message="GetItem span")
    assert client_fault.status.status_code == StatusCode.UNSET
    assert client_fault.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    broken = GrpcServer(_BrokenSigning(stack.services), stack.settings, INSTANCE_ID, port=0, host="127.0.0.1")
    broken.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{broken.port}") as channel, caplog.at_level(logging.ERROR):
            stub = _stub(channel)
            err = call_error(lambda: stub.Sign(pb.SignRequest(message=b"m"), metadata=stack.md(), timeout=5))
    finally:
        broken.stop(1)
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error"  # nothing about the cause reaches the client
    assert "secret-cause" not in repr(err.trailing_metadata())
    logged = [r for r in caplog.records if r.exc_info and "Sign" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret-cause" in str(logged[0].exc_info[1])
    span = wait_until(lambda: _span(spans, f"/{SERVICE_NAME}/Sign"), message="Sign span")
    assert span.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" and "secret-cause" in str(e.attributes) for e in span.events)


def test_health_checks_are_not_traced(
    stack: RpcStack, spans: InMemorySpanExporter, metric_values: Metrics
) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    stack.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=stack.md("read"), timeout=5)
    wait_until(lambda: _span(spans, f"/{SERVICE_NAME}/GetQuote"), message="the GetQuote span")
    assert not [s for s in spans.get_finished_spans() if "Health" in s.name]
    assert not [a for a, _ in metric_values.points(DURATION_METRIC) if a["rpc.service"] != SERVICE_NAME]


def _span(spans: InMemorySpanExporter, name: str) -> Any:
    return next((s for s in spans.get_finished_spans() if s.name == name), None)


def _stub(channel: grpc.Channel) -> Any:
    from app.rpc.platform.v1 import platform_pb2_grpc

    return platform_pb2_grpc.PlatformServiceStub(channel)


class _BrokenCrypto:
    def __init__(self, real: Any) -> None:
        self._real = real

    def sign(self, message: bytes) -> Any:
        raise RuntimeError("secret-cause: a bug, not the client's fault")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _BrokenSigning:
    """The real services, except that signing has a bug: the server must not leak it."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.crypto = _BrokenCrypto(real.crypto)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
