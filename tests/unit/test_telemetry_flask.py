"""Our Flask instrumentation emits what opentelemetry-instrumentation-flask emits, side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation._semconv import (
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _StabilityMode,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.telemetry import logging as tlog
from app.telemetry.setup import DURATION_BUCKETS_S, instrument_flask_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/v1/items/abc", {}),
    ("GET", "/v1/items/abc", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}),
    ("POST", "/v1/items/xyz", {"User-Agent": "loadgen/1"}),
    ("GET", "/nowhere", {}),
    ("GET", "/boom", {}),
    ("GET", "/healthz", {}),
    ("GET", "/metrics", {}),
]
# Attributes both implementations must agree on, where both set them.
SHARED = (
    "http.request.method",
    "url.scheme",
    "url.path",
    "http.route",
    "http.response.status_code",
    "network.protocol.version",
    "server.address",
    "client.address",
    "user_agent.original",
    "error.type",
)


@dataclass
class Rig:
    app: flask.Flask
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            p
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.data.data_points
        ]


def make_app() -> flask.Flask:
    app = flask.Flask("parity")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/v1/items/<key>")
    def get_item(key: str) -> dict[str, str]:
        return {"key": key}

    @app.post("/v1/items/<key>")
    def put_item(key: str) -> tuple[dict[str, str], int]:
        return {"key": key}, 201

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaput")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.get("/metrics")
    def metrics() -> str:
        return "# nothing\n"

    return app


def make_rig(contrib: bool) -> Rig:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    app = make_app()
    instrument_flask_app(
        app,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        contrib=contrib,
    )
    return Rig(app, spans, reader)


def run(rig: Rig) -> None:
    client = rig.app.test_client()
    for method, path, headers in REQUESTS:
        client.open(path, method=method, headers=headers)


@pytest.fixture(scope="module")
def rigs() -> tuple[Rig, Rig]:
    _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]
    mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
        _OpenTelemetryStabilitySignalType.HTTP
    )
    assert mode is _StabilityMode.HTTP, (
        "OTEL_SEMCONV_STABILITY_OPT_IN=http must be in effect (app.telemetry sets it)"
    )
    ours, theirs = make_rig(contrib=False), make_rig(contrib=True)
    run(ours)
    run(theirs)
    return ours, theirs


def test_same_spans(rigs: tuple[Rig, Rig]) -> None:
    ours, theirs = rigs
    mine, reference = ours.finished(), theirs.finished()
    names = ["GET /v1/items/<key>", "GET /v1/items/<key>", "POST /v1/items/<key>", "GET", "GET /boom"]
    assert [s.name for s in mine] == names
    # Only difference: without a route, contrib names the span after the raw path (unbounded); semconv and
    # we use the method alone.
    assert [s.name for s in reference] == [*names[:3], "GET /nowhere", names[4]]
    for a, b in zip(mine, reference, strict=True):
        assert a.kind is b.kind is SpanKind.SERVER
        assert a.status.status_code is b.status.status_code
        assert a.parent == b.parent or (a.parent and b.parent and a.parent.span_id == b.parent.span_id)
        a_attrs, b_attrs = dict(a.attributes or {}), dict(b.attributes or {})
        for key in SHARED:
            assert a_attrs.get(key) == b_attrs.get(key), (a.name, key)
        assert [e.name for e in a.events] == [e.name for e in b.events]
    assert mine[1].context.trace_id == int(TRACE_ID, 16)  # traceparent continued
    assert mine[1].parent is not None and mine[1].parent.span_id == int(PARENT_ID, 16)
    assert mine[3].status.status_code is StatusCode.UNSET  # 404: a client error is not a server error
    assert mine[4].status.status_code is StatusCode.ERROR
    assert dict(mine[4].attributes or {})["error.type"] == "500"  # as contrib: the status, on span and metric
    assert mine[4].events[0].attributes is not None
    assert mine[4].events[0].attributes["exception.type"] == "RuntimeError"


def test_same_metrics(rigs: tuple[Rig, Rig]) -> None:
    ours, theirs = rigs

    def shape(rig: Rig, name: str) -> dict[frozenset[tuple[str, Any]], int]:
        return {
            frozenset(dict(p.attributes).items()): (p.count if hasattr(p, "count") else p.value)
            for p in rig.points(name)
        }

    duration = shape(ours, "http.server.request.duration")
    assert duration == shape(theirs, "http.server.request.duration")
    assert sum(duration.values()) == 5  # the excluded health and metrics endpoints are not counted
    statuses = {dict(k)["http.response.status_code"] for k in duration}
    assert statuses == {200, 201, 404, 500}
    active = shape(ours, "http.server.active_requests")
    assert active == shape(theirs, "http.server.active_requests")
    assert set(active.values()) == {0}
    assert all(
        tuple(p.explicit_bounds) == DURATION_BUCKETS_S for p in ours.points("http.server.request.duration")
    )


def test_query_strings_never_reach_span_attributes() -> None:
    rig = make_rig(contrib=False)
    rig.app.test_client().get("/v1/items/abc?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
    (span,) = rig.finished()
    assert "eyJ" not in repr(dict(span.attributes or {}))


def test_span_exists_even_when_an_earlier_hook_answers() -> None:
    app = make_app()

    @app.before_request
    def deny() -> tuple[str, int] | None:
        return ("no", 401) if flask.request.path.startswith("/v1/") else None

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    instrument_flask_app(app, tracer_provider=tracer_provider, meter_provider=MeterProvider())
    assert app.test_client().get("/v1/items/abc").status_code == 401
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /v1/items/<key>"
    assert dict(span.attributes or {})["http.response.status_code"] == 401
    assert span.status.status_code is StatusCode.UNSET


def test_exception_text_on_spans_is_scrubbed() -> None:
    app = flask.Flask("leaky")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/login")
    def login() -> str:
        raise ValueError("password=hunter2 rejected")

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    instrument_flask_app(app, tracer_provider=tracer_provider, meter_provider=MeterProvider())
    assert app.test_client().get("/login").status_code == 500
    (span,) = spans.get_finished_spans()
    (event,) = span.events
    assert "hunter2" not in repr(dict(event.attributes or {})) + repr(span.status)


def test_access_log_context_is_left_in_the_environ() -> None:
    rig = make_rig(contrib=False)
    environs: list[dict[str, Any]] = []
    inner = rig.app.wsgi_app

    def keep(environ: dict[str, Any], start_response: Any) -> Any:
        environs.append(environ)
        return inner(environ, start_response)

    rig.app.wsgi_app = keep  # type: ignore[method-assign]
    rig.app.test_client().get("/v1/items/abc")
    (span,) = rig.finished()
    _, span_context = environs[0][tlog.ENVIRON_LOG_CONTEXT]
    assert span_context.span_id == span.context.span_id
