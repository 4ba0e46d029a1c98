"""gRPC asyncio server spans: what opentelemetry-instrumentation-grpc's aio server interceptor emits, for less
CPU.

`PlatformGrpcAioServerInstrumentor` is an instrumentor like contrib's `GrpcAioInstrumentorServer`:
registered under the `opentelemetry_instrumentor` entry point `platform_grpc_aio_server` (the platform
distro loads it instead of contrib's `grpc_aio_server`; disable it with
OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=platform_grpc_aio_server and contrib's runs), `instrument()` patches
`grpc.aio.server` so that every server created afterwards gets its interceptor first. It reads contrib's
OTEL_PYTHON_GRPC_EXCLUDED_SERVICES and takes contrib's `filter_` (a condition on the call details).

Output, checked side by side with contrib (tests/unit/telemetry/test_grpc_instrumentation.py): span named
by the full method (`/package.Service/Method`), kind SERVER, contrib's attributes (`rpc.system`,
`rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `net.peer.ip`, `net.peer.port`, `net.peer.name`,
`rpc.user_agent`), status ERROR with `"{code}:{details}"` for the codes contrib counts as server errors,
UNSET otherwise; the trace continued from the caller's metadata.

Why not contrib's: its interceptor costs over a quarter of a cached read's CPU, three times this one's
(docs/performance.md; bench/RESULTS.md, variants `shipped`, `stock` and `shipped-no-rpc-spans` over gRPC),
in work repeated on every call. Here:
- the wrapped handler is built once per method and reused while the next interceptor returns the same
  handler (contrib builds a new one per call);
- the servicer context is not wrapped in a proxy that intercepts `set_code` and `abort`: the code and
  details are read from the context once the call ends;
- the peer address is parsed once per connection, and the metadata scanned once;
- trace context is extracted only when a propagation key is present (with the default propagators).
Deliberate differences: an exception escaping the handler is recorded once (contrib records it twice) and
its text scrubbed, as is the client-sent user agent; a streaming handler written as a coroutine (one that
calls `context.write`) is traced too, where contrib's wrapper fails the call.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextvars import Token
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from app.telemetry.environment import listed
from app.telemetry.redaction import redact_text
from app.telemetry.server_spans import always_extract, record_exception

SCOPE = "app.telemetry.grpc_instrumentation"
EXCLUDED_SERVICES_ENV = "OTEL_PYTHON_GRPC_EXCLUDED_SERVICES"
# The codes contrib marks as a server error (its `_server_status`); every other code leaves the span UNSET.
ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
Filter = Callable[[grpc.HandlerCallDetails], bool]
Behavior = Callable[[Any, Any], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

_MAX_METHODS = 1024
_MAX_PEERS = 4096
_log = logging.getLogger(__name__)


class PlatformAioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """One SERVER span per call of a service that is not excluded; install it first, so its span wraps
    every other interceptor."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        filter_: Filter | None = None,
        excluded_services: Collection[str] | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self._filter = filter_
        if excluded_services is None:
            excluded_services = list(listed(os.environ.get(EXCLUDED_SERVICES_ENV)))
        self._excluded = frozenset(excluded_services)
        # path -> (the next interceptor's handler, ours around it); bounded by the server's methods.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._peers: dict[str, dict[str, str]] = {}
        self._always_extract = always_extract()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not is_instrumentation_enabled():
            return handler
        path: str = handler_call_details.method
        cached = self._handlers.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if self._filter is not None and not self._filter(handler_call_details):
            return handler
        service, _, method = path.lstrip("/").partition("/")
        if service in self._excluded:
            return handler
        wrapped = self._wrap(
            handler, path, {"rpc.system": "grpc", "rpc.method": method, "rpc.service": service}
        )
        if len(self._handlers) < _MAX_METHODS:
            self._handlers[path] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler, path: str, attributes: dict[str, Any]
    ) -> grpc.RpcMethodHandler:
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            # grpc.aio takes a streaming handler as an async generator, or as a coroutine function that
            # writes with `context.write` (grpc.health.v1's Watch); the wrapper must be of the same kind.
            if inspect.iscoroutinefunction(behavior):
                traced = self._traced_unary(behavior, path, attributes)
            else:
                traced = self._traced_stream(behavior, path, attributes)
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            factory = (
                grpc.stream_unary_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            traced = self._traced_unary(behavior, path, attributes)
        return factory(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _traced_unary(self, behavior: Behavior, path: str, attributes: dict[str, Any]) -> Behavior:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span, token = self._start(context, path, attributes)
            try:
                return await behavior(request, context)
            except Exception as error:
                _record_exception(span, error)
                raise
            finally:
                _end(span, context)
                otel_context.detach(token)

        return traced

    def _traced_stream(self, behavior: Behavior, path: str, attributes: dict[str, Any]) -> Behavior:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span, token = self._start(context, path, attributes)
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as error:
                _record_exception(span, error)
                raise
            finally:
                _end(span, context)
                otel_context.detach(token)

        return traced

    def _start(
        self, context: grpc.aio.ServicerContext, path: str, attributes: dict[str, Any]
    ) -> tuple[Span, Token[Context]]:
        metadata = dict(context.invocation_metadata() or ())
        parent = None
        if self._always_extract or "traceparent" in metadata or "baggage" in metadata:
            parent = propagate.extract(metadata)
        span_attributes = {**attributes, "rpc.grpc.status_code": 0, **self._peer(context.peer())}
        if agent := metadata.get("user-agent"):
            span_attributes["rpc.user_agent"] = redact_text(agent)
        span = self._tracer.start_span(path, context=parent, kind=SpanKind.SERVER, attributes=span_attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def _peer(self, peer: str) -> dict[str, str]:
        """Contrib's reading of `ipv4:127.0.0.1:57284` or `ipv6:%5B::1%5D:57284`, once per peer."""
        attributes = self._peers.get(peer)
        if attributes is not None:
            return attributes
        attributes = {}
        if not peer.startswith("unix:"):
            try:
                ip, port = peer.split(",")[0].split(":", 1)[1].rsplit(":", 1)
            except (IndexError, ValueError):
                _log.warning("Failed to parse peer address '%s'", peer)
            else:
                ip = unquote(ip)
                attributes = {"net.peer.ip": ip, "net.peer.port": port}
                if ip in ("[::1]", "127.0.0.1"):
                    attributes["net.peer.name"] = "localhost"
        if len(self._peers) >= _MAX_PEERS:
            self._peers.clear()  # connections come and go: start over rather than grow
        self._peers[peer] = attributes
        return attributes


def _end(span: Span, context: grpc.aio.ServicerContext) -> None:
    if span.is_recording():
        code = context.code()
        if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in ERROR_CODES:
                details = context.details() or code.value[1]
                span.set_status(Status(StatusCode.ERROR, f"{code}:{redact_text(str(details))}"))
    span.end()


def _record_exception(span: Span, error: Exception) -> None:
    # Contrib's rule: a bare `Exception` is taken for an abort the context already reported.
    if type(error) is not Exception and span.is_recording():
        record_exception(span, error)


class PlatformGrpcAioServerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every `grpc.aio` server created after `instrument()`.

    Keyword arguments, as contrib's GrpcAioInstrumentorServer: `tracer_provider` to `instrument()`,
    `filter_` to the constructor (combined with OTEL_PYTHON_GRPC_EXCLUDED_SERVICES).
    """

    def __init__(self, filter_: Filter | None = None) -> None:
        self._filter = filter_
        # Read here, as contrib does: the servers are created later, maybe under another environment.
        self._excluded = list(listed(os.environ.get(EXCLUDED_SERVICES_ENV)))
        self._original: Callable[..., grpc.aio.Server] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("grpcio >= 1.42.0",)

    def _instrument(self, **kwargs: Any) -> None:
        original = self._original = grpc.aio.server
        tracer_provider = kwargs.get("tracer_provider")
        filter_, excluded = self._filter, self._excluded

        def server(*args: Any, **server_kwargs: Any) -> grpc.aio.Server:
            interceptors: Iterable[Any] = server_kwargs.get("interceptors") or ()
            server_kwargs["interceptors"] = [
                PlatformAioServerInterceptor(
                    tracer_provider=tracer_provider, filter_=filter_, excluded_services=excluded
                ),
                *interceptors,
            ]
            return original(*args, **server_kwargs)

        grpc.aio.server = server

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._original is not None:
            grpc.aio.server = self._original
            self._original = None


__all__ = ["PlatformAioServerInterceptor", "PlatformGrpcAioServerInstrumentor"]
