"""The platform gRPC aio server instrumentor: contrib's spans on the same calls, an instrumentor's contract.

Two real grpc.aio servers on loopback, one with each interceptor, serve the same handlers; a sync client
makes the same calls to both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import negate, service_name
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.telemetry.grpc_instrumentation import PlatformAioServerInterceptor, PlatformGrpcAioServerInstrumentor
from tests.conftest import wait_until

SERVICE = "parity.v1.Echo"
EXCLUDED = "parity.v1.Health"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"ok:" + request


async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.INTERNAL)
    context.set_details("internal error")
    return b""


async def invalid(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key: bad")
    raise AssertionError("abort returned")


async def unavailable(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "store down")
    raise AssertionError("abort returned")


async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("kaput")


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


async def written(request: bytes, context: grpc.aio.ServicerContext) -> None:
    # A streaming handler as grpc.health.v1's Watch is written: a coroutine that writes.
    await context.write(b"a")
    await context.write(b"b")


UNARY: dict[str, Callable[..., Any]] = {
    "Ok": ok,
    "Fail": fail,
    "Invalid": invalid,
    "Unavailable": unavailable,
    "Boom": boom,
}


def handlers() -> tuple[grpc.GenericRpcHandler, ...]:
    echo = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in UNARY.items()}
    echo["Stream"] = grpc.unary_stream_rpc_method_handler(stream)
    echo["Written"] = grpc.unary_stream_rpc_method_handler(written)
    health = {"Check": grpc.unary_unary_rpc_method_handler(ok)}
    return (
        grpc.method_handlers_generic_handler(SERVICE, echo),
        grpc.method_handlers_generic_handler(EXCLUDED, health),
    )


class AioServer:
    """A grpc.aio server on 127.0.0.1, its event loop in a thread of its own."""

    def __init__(self, interceptors: list[Any] | None = None, *, factory: Callable[..., Any] | None = None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-server", daemon=True)
        self._thread.start()

        async def start() -> tuple[Any, int]:
            make = factory or grpc.aio.server
            server = make(interceptors=interceptors) if interceptors is not None else make()
            server.add_generic_rpc_handlers(handlers())
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, service: str, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        path = f"/{service}/{method}"
        try:
            if method in ("Stream", "Written"):
                list(self.channel.unary_stream(path)(b"x", metadata=metadata, timeout=5))
            else:
                self.channel.unary_unary(path)(b"x", metadata=metadata, timeout=5)
        except grpc.RpcError:
            pass  # the status is what the spans are compared on

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return tracer_provider, spans


CALLS: list[tuple[str, str, tuple[tuple[str, str], ...]]] = [
    (SERVICE, "Ok", ()),
    (SERVICE, "Ok", (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)),
    (SERVICE, "Fail", ()),
    (SERVICE, "Invalid", ()),
    (SERVICE, "Unavailable", ()),
    (SERVICE, "Boom", ()),
    (SERVICE, "Stream", ()),
    (EXCLUDED, "Check", ()),
    (SERVICE, "Missing", ()),  # UNIMPLEMENTED before any handler: no span from either
]
EXPECTED = [f"/{SERVICE}/{m}" for m in ("Ok", "Ok", "Fail", "Invalid", "Unavailable", "Boom", "Stream")]


def served(interceptor: Any, spans: InMemorySpanExporter) -> list[ReadableSpan]:
    server = AioServer([interceptor])
    try:
        for service, method, metadata in CALLS:
            server.call(service, method, metadata)
        # A server span ends after the status went out, so it may be exported just after the client returns.
        wait_until(
            lambda: len(spans.get_finished_spans()) >= len(EXPECTED), message="a server span per traced call"
        )
        return list(spans.get_finished_spans())
    finally:
        server.close()


@pytest.fixture(scope="module")
def both(monkeypatch_module: pytest.MonkeyPatch) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    monkeypatch_module.setenv("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", EXCLUDED)
    ours_provider, ours_spans = provider()
    theirs_provider, theirs_spans = provider()
    ours = served(PlatformAioServerInterceptor(tracer_provider=ours_provider), ours_spans)
    # Contrib's instrumentor reads the variable; its interceptor factory takes the same rule as a filter.
    contrib = aio_server_interceptor(tracer_provider=theirs_provider, filter_=negate(service_name(EXCLUDED)))
    theirs = served(contrib, theirs_spans)
    return ours, theirs


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def by_name(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted(spans, key=lambda s: (s.name, s.start_time or 0))


def test_same_spans_as_contrib(both: tuple[list[ReadableSpan], list[ReadableSpan]]) -> None:
    ours, theirs = (by_name(spans) for spans in both)
    assert [s.name for s in ours] == [s.name for s in theirs] == sorted(EXPECTED)
    for a, b in zip(ours, theirs, strict=True):
        assert a.kind is b.kind is SpanKind.SERVER
        a_attrs, b_attrs = dict(a.attributes or {}), dict(b.attributes or {})
        a_attrs.pop("net.peer.port"), b_attrs.pop("net.peer.port")  # each client has its own port
        assert a_attrs == b_attrs, a.name
        assert (a.status.status_code, a.status.description) == (b.status.status_code, b.status.description)
        # Contrib records an escaping exception twice (its handler and the span's context manager); once
        # is the truth.
        assert [e.name for e in a.events] == sorted({e.name for e in b.events})
        assert (a.parent is None) == (b.parent is None)


def test_codes_statuses_and_trace_context(both: tuple[list[ReadableSpan], list[ReadableSpan]]) -> None:
    ours = {s.name.rpartition("/")[2]: s for s in by_name(both[0])}
    codes = {name: dict(s.attributes or {})["rpc.grpc.status_code"] for name, s in ours.items()}
    # Boom: the exception escapes before grpc sets UNKNOWN; contrib leaves the code at 0 too.
    assert codes == {"Ok": 0, "Fail": 13, "Invalid": 3, "Unavailable": 14, "Boom": 0, "Stream": 0}
    assert ours["Fail"].status.status_code is StatusCode.ERROR
    assert ours["Fail"].status.description == "StatusCode.INTERNAL:internal error"
    assert ours["Invalid"].status.status_code is StatusCode.UNSET  # the client's fault
    assert [e.name for e in ours["Boom"].events] == ["exception"]
    attributes = dict(ours["Ok"].attributes or {})
    assert attributes["rpc.service"] == SERVICE
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert str(attributes["rpc.user_agent"]).startswith("grpc-python/")
    continued = [s for s in both[0] if s.parent is not None]
    assert len(continued) == 1
    assert continued[0].context.trace_id == int(TRACE_ID, 16)
    assert continued[0].parent is not None and continued[0].parent.span_id == int(PARENT_ID, 16)


def test_a_new_handler_from_the_next_interceptor_is_wrapped_again() -> None:
    """The per-method cache holds only while the next interceptor returns the very same handler."""
    tracer_provider, spans = provider()
    answers = iter([b"first", b"second"])

    class Swapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            reply = next(answers)

            async def answer(request: bytes, context: Any) -> bytes:
                return reply

            return grpc.unary_unary_rpc_method_handler(answer)

    server = AioServer([PlatformAioServerInterceptor(tracer_provider=tracer_provider), Swapping()])
    try:
        path = f"/{SERVICE}/Ok"
        replies = [server.channel.unary_unary(path)(b"x", timeout=5) for _ in range(2)]
    finally:
        server.close()
    assert replies == [b"first", b"second"]
    wait_until(lambda: len(spans.get_finished_spans()) == 2, message="two server spans")


def test_instrument_patches_new_servers_and_uninstrument_restores() -> None:
    original = grpc.aio.server
    tracer_provider, spans = provider()
    instrumentor = PlatformGrpcAioServerInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        server = AioServer()
        try:
            server.call(SERVICE, "Ok")
        finally:
            server.close()
        (span,) = wait_until(lambda: spans.get_finished_spans(), message="the server span")
        assert span.name == f"/{SERVICE}/Ok"
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "app.telemetry.grpc_instrumentation"
    finally:
        instrumentor.uninstrument()
    assert grpc.aio.server is original


def test_a_filter_keeps_calls_untraced() -> None:
    tracer_provider, spans = provider()
    only_ok = PlatformAioServerInterceptor(
        tracer_provider=tracer_provider,
        filter_=lambda details: str(details.method).endswith("/Ok"),
        excluded_services=(),
    )
    server = AioServer([only_ok])
    try:
        for method in ("Fail", "Ok", "Stream"):
            server.call(SERVICE, method)
    finally:
        server.close()
    wait_until(lambda: len(spans.get_finished_spans()) == 1, message="one server span")
    assert [s.name for s in spans.get_finished_spans()] == [f"/{SERVICE}/Ok"]


def test_a_streaming_handler_written_as_a_coroutine_is_traced() -> None:
    tracer_provider, spans = provider()
    server = AioServer([PlatformAioServerInterceptor(tracer_provider=tracer_provider)])
    try:
        replies = list(server.channel.unary_stream(f"/{SERVICE}/Written")(b"x", timeout=5))
    finally:
        server.close()
    assert replies == [b"a", b"b"]
    (span,) = wait_until(lambda: spans.get_finished_spans(), message="the server span")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == 0
