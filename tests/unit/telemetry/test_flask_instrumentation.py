"""The platform Flask instrumentor: contrib's output on the same requests, and an instrumentor's contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.telemetry.buckets import DURATION_BUCKETS_S
from app.telemetry.environment import FLASK_EXCLUDED_URLS
from app.telemetry.flask_instrumentation import PlatformFlaskInstrumentor

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


def make_rig(contrib: bool = False, app: flask.Flask | None = None, **kwargs: Any) -> Rig:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    app = app or make_app()
    providers = {"tracer_provider": tracer_provider, "meter_provider": MeterProvider(metric_readers=[reader])}
    if contrib:
        FlaskInstrumentor.instrument_app(app, **providers, **kwargs)
    else:
        PlatformFlaskInstrumentor.instrument_app(app, **providers, **kwargs)
    return Rig(app, spans, reader)


def run(rig: Rig) -> None:
    client = rig.app.test_client()
    for method, path, headers in REQUESTS:
        client.open(path, method=method, headers=headers)


@pytest.fixture(scope="module")
def rigs() -> tuple[Rig, Rig]:
    # Both with the distro's default exclusions (health, readiness, metrics), as in every worker.
    excluded: dict[str, Any] = {"excluded_urls": FLASK_EXCLUDED_URLS}
    ours, theirs = make_rig(contrib=False, **excluded), make_rig(contrib=True, **excluded)
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

    rig = make_rig(app=app)
    assert app.test_client().get("/v1/items/abc").status_code == 401
    (span,) = rig.finished()
    assert span.name == "GET /v1/items/<key>"
    assert dict(span.attributes or {})["http.response.status_code"] == 401
    assert span.status.status_code is StatusCode.UNSET


def test_exception_text_on_spans_is_scrubbed() -> None:
    app = flask.Flask("leaky")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/login")
    def login() -> str:
        raise ValueError("password=hunter2 rejected")

    rig = make_rig(app=app)
    assert app.test_client().get("/login").status_code == 500
    (span,) = rig.finished()
    (event,) = span.events
    assert "hunter2" not in repr(dict(event.attributes or {})) + repr(span.status)


def test_request_and_response_hooks_see_what_contribs_do() -> None:
    seen: dict[str, list[Any]] = {"ours": [], "contrib": []}

    def hooks(name: str) -> dict[str, Any]:
        def request_hook(span: Any, environ: dict[str, Any]) -> None:
            seen[name].append(("request", environ["PATH_INFO"]))
            span.set_attribute("app.hooked", True)

        def response_hook(span: Any, status: str, headers: list[tuple[str, str]]) -> None:
            seen[name].append(("response", status, dict(headers).get("Content-Type")))

        return {"request_hook": request_hook, "response_hook": response_hook}

    ours = make_rig(contrib=False, **hooks("ours"))
    theirs = make_rig(contrib=True, **hooks("contrib"))
    for rig in (ours, theirs):
        rig.app.test_client().get("/v1/items/abc")
    assert (
        seen["ours"]
        == seen["contrib"]
        == [("request", "/v1/items/abc"), ("response", "200 OK", "application/json")]
    )
    assert dict(ours.finished()[0].attributes or {})["app.hooked"] is True


def test_excluded_urls_from_the_environment_and_from_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", r"//[^/]+/v1/items/private(\?|$)")
    rig = make_rig()
    client = rig.app.test_client()
    client.get("/v1/items/private")
    client.get("/v1/items/public")
    assert [dict(s.attributes or {})["url.path"] for s in rig.finished()] == ["/v1/items/public"]
    explicit = make_rig(excluded_urls="items/public")
    explicit.app.test_client().get("/v1/items/public")
    assert explicit.finished() == []


def test_captured_headers_follow_contribs_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-tenant")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    rig = make_rig()
    rig.app.test_client().get("/v1/items/abc", headers={"X-Tenant": "acme"})
    (span,) = rig.finished()
    attributes = dict(span.attributes or {})
    assert attributes["http.request.header.x_tenant"] == ("acme",)
    assert attributes["http.response.header.content_type"] == ("application/json",)


def test_instrument_covers_every_app_and_uninstrument_restores_flask() -> None:
    original = flask.Flask.wsgi_app
    before = make_app()  # created before instrument(): the patch is on the class, so it is covered too
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    instrumentor = PlatformFlaskInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider())
    try:
        after = make_app()
        before.test_client().get("/v1/items/a")
        after.test_client().get("/v1/items/b")
        assert [dict(s.attributes or {})["url.path"] for s in spans.get_finished_spans()] == [
            "/v1/items/a",
            "/v1/items/b",
        ]
        # An app instrumented on its own as well gets one span per request, not two.
        spans.clear()
        make_rig(app=after)
        after.test_client().get("/v1/items/c")
        assert spans.get_finished_spans() == ()
    finally:
        instrumentor.uninstrument()
    assert flask.Flask.wsgi_app is original
