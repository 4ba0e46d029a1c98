"""GrpcServer lifecycle: start on port 0, health, reflection, graceful stop, cancellation."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.rpc.interceptors import SERVICE_NAME
from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc
from app.rpc.server import GrpcServer
from tests.conftest import wait_until
from tests.unit.rpc.support import INSTANCE_ID, RpcStack, call_error, rpc_stack

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def stack(redis_server: str) -> Iterator[RpcStack]:
    with rpc_stack(redis_server, start_pool=False) as s:
        yield s


@pytest.fixture
def server(stack: RpcStack) -> Iterator[GrpcServer]:
    """A second server of this test's own over the module's services, so the test may stop it."""
    srv = GrpcServer(stack.services, stack.settings, INSTANCE_ID, port=0, host="127.0.0.1")
    srv.start()
    yield srv
    srv.stop(1)


def test_start_binds_a_real_port_and_exposes_its_loop(server: GrpcServer) -> None:
    assert server.port > 0 and server.serving
    assert server.loop.is_running()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass
    with pytest.raises(RuntimeError, match="twice"):
        server.start()


def test_health_reports_serving_for_the_server_and_the_service(stack: RpcStack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    for name in ("", SERVICE_NAME):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING
    err = call_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service_and_describes_it(stack: RpcStack) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # clients can build stubs from it


def test_stop_turns_health_not_serving_and_lets_an_in_flight_stream_finish(
    stack: RpcStack, server: GrpcServer
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        assert next(health).status == SERVING

        stub = pb_stub(channel)
        stream = stub.WatchQuotes(
            pb.WatchQuotesRequest(symbol="ACME", count=3, interval_ms=300), metadata=stack.md(), timeout=10
        )
        first = next(stream)  # the call is now in flight
        stopper = threading.Thread(target=server.stop, args=(5.0,))
        started = time.monotonic()
        stopper.start()

        assert next(health).status == NOT_SERVING
        health.cancel()
        wait_until(lambda: not server.serving, timeout=5, message="serving to turn false")
        # New calls are refused while the old one drains (the listener is closed).
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as fresh:
            err = call_error(lambda: pb_stub(fresh).GetQuote(pb.GetQuoteRequest(symbol="ACME"), timeout=1))
            assert err.code() == grpc.StatusCode.UNAVAILABLE

        rest = list(stream)
        assert [q.symbol for q in [first, *rest]] == ["ACME"] * 3
        assert stream.code() == grpc.StatusCode.OK
        stopper.join(6)
        assert not stopper.is_alive()
        assert time.monotonic() - started < 5.0  # stop returned when the stream ended, not at the grace


def test_stop_cancels_what_outlives_the_grace_and_is_bounded(stack: RpcStack, server: GrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = pb_stub(channel).WatchQuotes(
            pb.WatchQuotesRequest(symbol="ACME", count=100, interval_ms=1000), metadata=stack.md(), timeout=30
        )
        next(stream)
        started = time.monotonic()
        server.stop(0.3)
        assert time.monotonic() - started < 0.3 + 1.0
        with pytest.raises(grpc.RpcError):
            list(stream)
    assert not server.serving
    assert server.loop.is_closed()
    server.stop(0.3)  # idempotent


def test_stop_from_the_loop_thread_schedules_the_shutdown(server: GrpcServer) -> None:
    server.loop.call_soon_threadsafe(server.stop, 0.1)
    wait_until(lambda: server.loop.is_closed(), timeout=5, message="the loop to close")
    assert not server.serving


def test_start_fails_loudly_when_the_port_is_taken(stack: RpcStack) -> None:
    with socket.socket() as blocker:  # no SO_REUSEPORT: nobody may share this port
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        srv = GrpcServer(stack.services, stack.settings, INSTANCE_ID, port=port, host="127.0.0.1")
        with pytest.raises(RuntimeError):
            srv.start()
        assert not srv.serving
        srv.stop(1)  # harmless after a failed start


def test_workers_can_share_the_port(stack: RpcStack, server: GrpcServer) -> None:
    second = GrpcServer(stack.services, stack.settings, "second", port=server.port, host="127.0.0.1")
    second.start()
    try:
        assert second.port == server.port and second.serving
    finally:
        second.stop(1)


def pb_stub(channel: grpc.Channel) -> pb_grpc.PlatformServiceStub:
    return pb_grpc.PlatformServiceStub(channel)
