"""Flask server spans and HTTP metrics: what opentelemetry-instrumentation-flask emits, for less CPU.

`PlatformFlaskInstrumentor` is an instrumentor like contrib's: registered under the
`opentelemetry_instrumentor` entry point `platform_flask` (the platform distro loads it instead of
contrib's `flask`; disable it with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=platform_flask and contrib's
runs), `instrument()` covers every Flask app in the process, `instrument_app(app)` a single one. It reads
contrib's variables (OTEL_PYTHON_FLASK_EXCLUDED_URLS, OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_*)
and takes contrib's `request_hook(span, environ)` and `response_hook(span, status, response_headers)`.

Output in stable HTTP semconv mode, checked side by side with contrib (tests/unit/telemetry/test_flask_
instrumentation.py): span `<METHOD> <route>`, kind SERVER, the same attributes and status;
`http.server.request.duration` (s) with method, scheme, route, status, protocol, error.type, recorded in
the span's context so it carries exemplars; `http.server.active_requests`.

Why not contrib's: it costs about as much CPU as a small request itself (bench/RESULTS.md, variant
`stock`), mostly in work done twice per request. Here a request costs one span, one histogram record and
two counter updates:
- no Flask request hooks (Flask dispatches each through `ensure_sync`): the WSGI call and the app's
  `full_dispatch_request` are wrapped instead, so the span starts once routing found the rule, before any
  before_request function runs (auth and rate-limit answers are inside it);
- the span's attributes are built once; the histogram's attribute sets are built once per distinct set;
- the excluded-URL check runs once, and only on the path unless the pattern needs the whole URL;
- trace context is extracted only when a propagation header is present (with the default propagators).
Deliberate differences: `url.query` is never recorded (query strings carry tokens, and spans must hold
no secrets); a request that matches no route is named by its method alone, as the semantic conventions
say, not by its raw path (an unbounded set of span names); exception text on spans is scrubbed.

Just over 400 lines, as one instrumentor: its wrappers and per-request state are read together.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextvars import ContextVar
from time import perf_counter, time_ns
from typing import TYPE_CHECKING, Any

import flask
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.wsgi import (
    collect_custom_request_headers_attributes,
    collect_custom_response_headers_attributes,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    ExcludeList,
    get_excluded_urls,
    parse_excluded_urls,
)

from app.telemetry.buckets import DURATION_BUCKETS_S
from app.telemetry.redaction import redact_text
from app.telemetry.server_spans import always_extract, record_exception

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SCOPE = "app.telemetry.flask_instrumentation"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
RequestHook = Callable[[Span, "WSGIEnvironment"], None]
ResponseHook = Callable[[Span, str, list[tuple[str, str]]], None]

_MAX_ATTRIBUTE_SETS = 1024


class _EnvironGetter(Getter[Any]):
    """Reads propagation headers from a WSGI environ (`traceparent` -> `HTTP_TRACEPARENT`)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if value is not None else None

    def keys(self, carrier: Any) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = _EnvironGetter()


class _Request:
    """One request's telemetry state, from the WSGI call to its end."""

    __slots__ = ("environ", "method", "protocol", "route", "scheme", "span", "start_ns", "status", "token")

    def __init__(self, environ: WSGIEnvironment, method: str, scheme: str) -> None:
        self.environ = environ
        self.method = method
        self.scheme = scheme
        protocol: str = environ.get("SERVER_PROTOCOL", "")
        self.protocol = protocol[5:] if protocol.upper().startswith("HTTP/") else protocol
        self.start_ns = time_ns()
        self.span: Span | None = None
        self.token: object | None = None
        self.route: str | None = None
        self.status: int | None = None


# The request this thread (or task) is handling: set around the WSGI call, read once routing is done.
_current: ContextVar[_Request | None] = ContextVar("platform_flask_request", default=None)


class _FlaskTelemetry:
    """The instruments and settings one instrumentation uses; wraps a Flask app's two entry points."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        excluded_urls: str | None = None,
        request_hook: RequestHook | None = None,
        response_hook: ResponseHook | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._active: dict[tuple[str, str], int] = {}
        self._active_lock = threading.Lock()
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[self._observe_active],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )
        # Histogram attribute sets by (method, scheme, protocol, route, status or error): built once, not
        # per request. Bounded: methods, routes and status codes are finite sets.
        self._attribute_sets: dict[tuple[str, str, str, str | None, int | str | None], dict[str, Any]] = {}
        self._excluded: ExcludeList = (
            get_excluded_urls("FLASK") if excluded_urls is None else parse_excluded_urls(excluded_urls)
        )
        self._request_hook = request_hook
        self._response_hook = response_hook
        self._capture_request_headers = bool(
            os.environ.get(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST)
        )
        self._capture_response_headers = bool(
            os.environ.get(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE)
        )
        self._always_extract = always_extract()

    # -- the two seams ------------------------------------------------------------------------------------
    def wrap_wsgi(self, wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """Around everything Flask does: duration, active requests, the end of the span."""

        def instrumented_wsgi_app(
            app: flask.Flask, environ: WSGIEnvironment, start_response: StartResponse
        ) -> Iterable[bytes]:
            if self._is_excluded(environ):
                return wsgi_app(app, environ, start_response)
            return self._handle(app, wsgi_app, environ, start_response)

        return instrumented_wsgi_app

    def wrap_dispatch(
        self, dispatch: Callable[[flask.Flask], flask.Response]
    ) -> Callable[..., flask.Response]:
        """Inside Flask, once the URL rule is known: the span starts here, before any request hook."""

        def instrumented_full_dispatch_request(app: flask.Flask) -> flask.Response:
            state = _current.get()
            if state is None or state.span is not None:  # excluded, or a nested dispatch
                return dispatch(app)
            span = self._start_span(state, flask.request.url_rule)
            try:
                response = dispatch(app)
            except BaseException as exc:
                # Flask turns it into a 500 (handle_exception) or, when propagating, re-raises it.
                state.status = 500
                _record_exception(span, exc)
                raise
            state.status = response.status_code
            if span.is_recording():
                if self._response_hook is not None:
                    self._response_hook(span, response.status, list(response.headers.items()))
                if self._capture_response_headers:
                    span.set_attributes(
                        collect_custom_response_headers_attributes(list(response.headers.items()))
                    )
            return response

        return instrumented_full_dispatch_request

    # -- per request --------------------------------------------------------------------------------------
    def _handle(
        self,
        app: flask.Flask,
        wsgi_app: Callable[..., Iterable[bytes]],
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        started = perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        if method not in KNOWN_METHODS:
            method = "_OTHER"
        state = _Request(environ, method, environ.get("wsgi.url_scheme", "http"))
        reset = _current.set(state)
        active_key = (method, state.scheme)
        with self._active_lock:
            self._active[active_key] = self._active.get(active_key, 0) + 1
        error: BaseException | None = None
        try:
            return wsgi_app(app, environ, start_response)
        except BaseException as exc:  # propagated by Flask (PROPAGATE_EXCEPTIONS): no response was made
            error = exc
            state.status = None
            raise
        finally:
            _current.reset(reset)
            with self._active_lock:
                self._active[active_key] -= 1
            span = state.span
            self._end_span(state, error)
            self._duration.record(
                max(perf_counter() - started, 0.0),
                self._metric_attributes(state, error),
                context=trace.set_span_in_context(span) if span is not None else None,
            )

    def _is_excluded(self, environ: WSGIEnvironment) -> bool:
        excluded = self._excluded
        # Contrib matches the patterns against the request URL; so does this, built from the environ.
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{environ.get('PATH_INFO', '')}"
        if query := environ.get("QUERY_STRING"):
            url = f"{url}?{query}"
        return bool(excluded.url_disabled(url))

    def _start_span(self, state: _Request, rule: Any) -> Span:
        environ = state.environ
        route = rule.rule if rule is not None else None
        state.route = route
        method = state.method
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": state.scheme,
            # Client-sent text, scrubbed like the access line (a token pasted into a path or a
            # User-Agent must not reach a span); a cheap pre-check keeps this off the hot path.
            "url.path": redact_text(environ.get("PATH_INFO", "") or "/"),
            "network.protocol.version": state.protocol,
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = environ.get("REQUEST_METHOD", "")
        if route is not None:
            attributes["http.route"] = route
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
        if host:
            address, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
            attributes["server.address"] = address or host
            if port.isdigit():
                attributes["server.port"] = int(port)
        if remote := environ.get("REMOTE_ADDR"):
            attributes["client.address"] = remote
        if agent := environ.get("HTTP_USER_AGENT"):
            attributes["user_agent.original"] = redact_text(agent)
        if self._capture_request_headers:
            attributes.update(collect_custom_request_headers_attributes(environ))
        parent = None
        if self._always_extract or "HTTP_TRACEPARENT" in environ or "HTTP_BAGGAGE" in environ:
            parent = propagate.extract(environ, getter=_GETTER)
        # Semconv span name: "{method} {route}", the method alone without a route ("HTTP" for unknown
        # methods).
        base = "HTTP" if method == "_OTHER" else method
        span = self._tracer.start_span(
            f"{base} {route}" if route is not None else base,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=state.start_ns,
        )
        state.span = span
        state.token = otel_context.attach(trace.set_span_in_context(span, parent))
        if self._request_hook is not None and span.is_recording():
            self._request_hook(span, environ)
        return span

    @staticmethod
    def _end_span(state: _Request, error: BaseException | None) -> None:
        """After Flask's teardown, so that error logs written while handling an exception are in the span."""
        span, token = state.span, state.token
        if span is None or token is None:
            return
        state.token = None
        if span.is_recording():
            if state.status is not None:
                span.set_attribute("http.response.status_code", state.status)
                if state.status >= 500:
                    span.set_attribute("error.type", str(state.status))
                    span.set_status(Status(StatusCode.ERROR))
            elif error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    def _metric_attributes(self, state: _Request, error: BaseException | None) -> dict[str, Any]:
        key = (
            state.method,
            state.scheme,
            state.protocol,
            state.route,
            state.status if error is None else type(error).__qualname__,
        )
        attributes = self._attribute_sets.get(key)
        if attributes is not None:
            return attributes
        attributes = {
            "http.request.method": state.method,
            "url.scheme": state.scheme,
            "network.protocol.version": state.protocol,
        }
        if state.route is not None:
            attributes["http.route"] = state.route
        if error is not None:
            attributes["error.type"] = type(error).__qualname__
        elif state.status is not None:
            attributes["http.response.status_code"] = state.status
            if state.status >= 500:
                attributes["error.type"] = str(state.status)
        if len(self._attribute_sets) < _MAX_ATTRIBUTE_SETS:
            self._attribute_sets[key] = attributes
        return attributes

    def _observe_active(self, _options: CallbackOptions) -> Iterator[Observation]:
        with self._active_lock:
            counts = list(self._active.items())
        for (method, scheme), count in counts:
            yield Observation(count, {"http.request.method": method, "url.scheme": scheme})


def _record_exception(span: Span, exc: BaseException) -> None:
    if not span.is_recording():
        return
    record_exception(span, exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))


class PlatformFlaskInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every Flask app of the process (`instrument()`) or one app (`instrument_app`).

    Keyword arguments, as contrib's FlaskInstrumentor: `tracer_provider`, `meter_provider`,
    `excluded_urls` (comma-separated patterns; default OTEL_PYTHON_FLASK_EXCLUDED_URLS), `request_hook`,
    `response_hook`.
    """

    _originals: tuple[Any, Any] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("flask >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        telemetry = _telemetry(kwargs)
        cls = flask.Flask
        PlatformFlaskInstrumentor._originals = (cls.wsgi_app, cls.full_dispatch_request)
        cls.wsgi_app = telemetry.wrap_wsgi(cls.wsgi_app)  # type: ignore[method-assign]
        cls.full_dispatch_request = telemetry.wrap_dispatch(cls.full_dispatch_request)  # type: ignore[method-assign]

    def _uninstrument(self, **kwargs: Any) -> None:
        if PlatformFlaskInstrumentor._originals is not None:
            flask.Flask.wsgi_app, flask.Flask.full_dispatch_request = PlatformFlaskInstrumentor._originals  # type: ignore[method-assign]
            PlatformFlaskInstrumentor._originals = None

    @staticmethod
    def instrument_app(app: flask.Flask, **kwargs: Any) -> flask.Flask:
        """Instrument only `app` (with its own providers, if given); the process-wide patch is untouched."""
        telemetry = _telemetry(kwargs)
        # The undecorated methods, even while every app is instrumented: never two spans per request.
        originals = PlatformFlaskInstrumentor._originals or (
            flask.Flask.wsgi_app,
            flask.Flask.full_dispatch_request,
        )
        wsgi_app = telemetry.wrap_wsgi(originals[0])
        dispatch = telemetry.wrap_dispatch(originals[1])
        app.wsgi_app = wsgi_app.__get__(app)  # type: ignore[method-assign]
        app.full_dispatch_request = dispatch.__get__(app)  # type: ignore[method-assign]
        return app


def _telemetry(kwargs: dict[str, Any]) -> _FlaskTelemetry:
    return _FlaskTelemetry(
        tracer_provider=kwargs.get("tracer_provider"),
        meter_provider=kwargs.get("meter_provider"),
        excluded_urls=kwargs.get("excluded_urls"),
        request_hook=kwargs.get("request_hook"),
        response_hook=kwargs.get("response_hook"),
    )


__all__ = ["PlatformFlaskInstrumentor"]
