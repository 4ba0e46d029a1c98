"""Everything a PlatformService call passes through before and after the servicer, in one interceptor.

Per call, in this order:

1. request context: `x-request-id` from metadata if well formed, else a new one; bound as
   `RequestContext(transport="grpc")`, and sent back as initial metadata with `x-instance-id` (which
   worker served the call);
2. admission through the domain's edge policy (`services.edge.admit`, app.domain.edge): bearer token,
   the method's scope (table below), the caller's rate limit; a rejection becomes its status code (a
   rate limit: RESOURCE_EXHAUSTED with a `retry-after` trailer);
4. error mapping: `DomainError` -> its code, a message naming the field and rich details (status.py);
   anything else -> INTERNAL "internal error", traceback to the log and the span, never to the client;
5. metrics: `rpc.server.call.duration` for every call, auth failures included.

| scope   | methods |
|---------|---------|
| `read`  | GetItem, GetQuote, WatchQuotes, GetJob |
| `write` | PutItem, DeleteItem, Encrypt, Decrypt, Sign, Verify, Hash, CountPrimes, SubmitJob |
| `admin` | ReplayDeadJobs |

Other services on the same server (grpc.health.v1.Health, reflection) pass through untouched: they need
no token and are not application RED traffic.

One interceptor instead of one per concern because every grpc.aio interceptor layer costs a handler
object, a closure and an extra await per call. Admission may block (the rate limiter may talk to Redis), so
it runs on the handler executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor
from contextlib import aclosing
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import metrics, trace

from app.domain import auth
from app.domain import context as request_context
from app.domain.edge import EdgePolicy
from app.domain.errors import DomainError, InvalidArgument
from app.rpc.ports import RpcServices
from app.rpc.status import INTERNAL_DETAILS, code_for, message_for, trailers_for
from app.telemetry.buckets import DURATION_BUCKETS_S

log = logging.getLogger(__name__)

SERVICE_NAME = "platform.v1.PlatformService"
READ_SCOPE = auth.READ
WRITE_SCOPE = auth.WRITE

METHOD_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        "GetItem": READ_SCOPE,
        "GetQuote": READ_SCOPE,
        "WatchQuotes": READ_SCOPE,
        "PutItem": WRITE_SCOPE,
        "DeleteItem": WRITE_SCOPE,
        "Encrypt": WRITE_SCOPE,
        "Decrypt": WRITE_SCOPE,
        "Sign": WRITE_SCOPE,
        "Verify": WRITE_SCOPE,
        "Hash": WRITE_SCOPE,
        "CountPrimes": WRITE_SCOPE,
        "SubmitJob": WRITE_SCOPE,
        "GetJob": READ_SCOPE,
        "ReplayDeadJobs": auth.ADMIN,
    }
)

DURATION_METRIC = "rpc.server.call.duration"

REQUEST_ID_KEY = "x-request-id"
INSTANCE_ID_KEY = "x-instance-id"
AUTHORIZATION_KEY = "authorization"

# Codes that mean "our fault": the exception goes on the span, as for HTTP 5xx.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
    }
)

Behavior = Callable[[Any, Any], Any]
Deserializer = Callable[[bytes], Any]


class Undecodable:
    """Stands in for a request whose bytes are not a valid message, until admission has run.

    grpc would answer such a request UNKNOWN, with protobuf's exception in the details, before any
    interceptor code runs. Parsing into this instead lets the call be admitted first (a caller without a
    token learns nothing about the request format) and then fail INVALID_ARGUMENT like any bad input.
    """

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail

    def error(self) -> InvalidArgument:
        return InvalidArgument(self.detail, field="request")


def _tolerant(deserialize: Deserializer | None, message_name: str) -> Deserializer | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            text = str(exc)
            if "UTF-8" in text:
                why = "a string field is not valid UTF-8"
            elif "Max" in text or "depth" in text.lower() or "recursion" in text.lower():
                why = "messages are nested more than 100 deep"
            else:
                why = "the wire format is corrupt"
            return Undecodable(f"not a valid {message_name}: {why}")

    return parse


class _Method:
    """What the interceptor knows about one RPC, computed once: scope and metric attributes per code."""

    __slots__ = ("attributes", "full_name", "name", "request_type", "scope")

    def __init__(self, name: str, scope: str) -> None:
        self.name = name
        self.scope = scope
        self.full_name = f"/{SERVICE_NAME}/{name}"
        self.request_type = f"{SERVICE_NAME.rpartition('.')[0]}.{name}Request"
        self.attributes: dict[grpc.StatusCode, dict[str, str | int]] = {
            code: {
                "rpc.system": "grpc",
                "rpc.service": SERVICE_NAME,
                "rpc.method": name,
                "rpc.grpc.status_code": code.value[0],
            }
            for code in grpc.StatusCode
        }


class PlatformInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Must be the last interceptor: it caches its wrapped handler per method instead of asking the
    continuation again on every call (the servicer's handlers never change)."""

    def __init__(
        self,
        services: RpcServices,
        executor: Executor,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._services = services
        self._executor = executor
        self._instance_id = instance_id
        self._clock = clock
        self._methods = {m.full_name: m for m in (_Method(n, s) for n, s in METHOD_SCOPES.items())}
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._duration = metrics.get_meter("app.rpc").create_histogram(
            DURATION_METRIC,
            unit="s",
            description="Duration of inbound gRPC calls, from the interceptor's view",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is not None:
            return handler
        method = self._methods.get(path)
        inner = await continuation(handler_call_details)
        if method is None or inner is None:  # another service, or unknown method (UNIMPLEMENTED)
            return inner
        handler = self._wrap(inner, method)
        self._handlers[path] = handler
        return handler

    def _wrap(self, inner: grpc.RpcMethodHandler, method: _Method) -> grpc.RpcMethodHandler:
        if inner.request_streaming:
            # Fail closed: an RPC shape this interceptor cannot guard must not be served unguarded.
            raise RuntimeError(f"{method.full_name}: client-streaming RPCs are not supported")
        deserializer = _tolerant(inner.request_deserializer, method.request_type)
        if inner.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(inner.unary_stream, method),
                request_deserializer=deserializer,
                response_serializer=inner.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guard_unary(inner.unary_unary, method),
            request_deserializer=deserializer,
            response_serializer=inner.response_serializer,
        )

    def _guard_unary(self, behavior: Behavior, method: _Method) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = self._clock()
            code = grpc.StatusCode.OK
            try:
                await self._admit(context, method)
                if isinstance(request, Undecodable):
                    raise request.error()
                return await behavior(request, context)
            except DomainError as err:
                code = self._reject(context, err)
                return None  # grpc discards the response of a call whose code is not OK
            except asyncio.CancelledError:
                code = _cancel_code(context)
                raise
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as err:
                code = self._fail(context, err, method)
                return None
            finally:
                self._duration.record(self._clock() - start, method.attributes[code])

        return guarded

    def _guard_stream(self, behavior: Behavior, method: _Method) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = self._clock()
            code = grpc.StatusCode.OK
            try:
                await self._admit(context, method)
                if isinstance(request, Undecodable):
                    raise request.error()
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except DomainError as err:
                code = self._reject(context, err)
            except (asyncio.CancelledError, GeneratorExit):
                # GeneratorExit: the client went away while a message was being written and the
                # generator is closed afterwards.
                code = _cancel_code(context)
                raise
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as err:
                code = self._fail(context, err, method)
            finally:
                self._duration.record(self._clock() - start, method.attributes[code])

        return guarded

    async def _admit(self, context: grpc.aio.ServicerContext, method: _Method) -> None:
        request_id: str | None = None
        credentials: list[str] = []
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                request_id = value
            elif key == AUTHORIZATION_KEY:
                credentials.append(value)
        # Repeated, they are joined as an HTTP server joins repeated fields ("a, b"), which no bearer
        # scheme parses: two credentials are refused, as over HTTP, instead of one silently winning.
        authorization = ", ".join(credentials) if credentials else None
        # Not ended afterwards on purpose: grpc.aio runs each RPC in its own task, whose context ends
        # with the call; a reset from a generator closed later, in another task, would fail.
        EdgePolicy.begin("grpc", request_id)
        rid = request_context.current().request_id
        await context.send_initial_metadata(((REQUEST_ID_KEY, rid), (INSTANCE_ID_KEY, self._instance_id)))
        ctx = contextvars.copy_context()
        admission = await asyncio.get_running_loop().run_in_executor(
            self._executor, ctx.run, self._services.edge.admit, authorization, method.scope
        )
        # admit() recorded the caller in the executor's copy of the context; the call's own needs it too.
        request_context.set_user(admission.principal.subject)

    def _reject(self, context: grpc.aio.ServicerContext, err: DomainError) -> grpc.StatusCode:
        code = code_for(err)
        message = message_for(err)
        context.set_code(code)
        context.set_details(message)
        context.set_trailing_metadata(trailers_for(err, message))
        if code in SERVER_FAULTS:
            trace.get_current_span().record_exception(err)
        return code

    def _fail(self, context: grpc.aio.ServicerContext, err: Exception, method: _Method) -> grpc.StatusCode:
        log.exception("unhandled error in %s", method.full_name)
        trace.get_current_span().record_exception(err)
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(INTERNAL_DETAILS)
        return grpc.StatusCode.INTERNAL


def _cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
