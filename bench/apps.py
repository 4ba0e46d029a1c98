"""The endpoint every throughput variant serves: a small JSON response, no I/O, as in a health-style route."""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify


def bare() -> Flask:
    """Uninstrumented baseline."""
    app = Flask("bench")

    @app.get("/hello/<name>")
    def hello(name: str) -> Response:
        return jsonify({"hello": name, "n": len(name)})

    return app


def shipped() -> Flask:
    """The same app with exactly the HTTP instrumentation the service ships (app.telemetry).

    BENCH_WITHOUT (comma-separated: span, histogram, access-log) switches single parts off, to measure
    what each costs (`bench.throughput --variants bare,shipped,shipped-without-span,...`).
    """
    from app.telemetry.setup import instrument_flask_app

    _switch_off(set(filter(None, os.environ.get("BENCH_WITHOUT", "").split(","))))
    app = bare()
    instrument_flask_app(app)
    return app


def _switch_off(parts: set[str]) -> None:
    unknown = parts - {"span", "histogram", "access-log"}
    if unknown:
        raise SystemExit(f"BENCH_WITHOUT: unknown parts {sorted(unknown)} (span, histogram, access-log)")
    if "span" in parts:
        from app.telemetry.flask_instrumentation import FlaskInstrumentation

        FlaskInstrumentation._start_span = lambda self, state, rule: None
    if "histogram" in parts:  # both paths: the in-process aggregation and the SDK histogram
        from opentelemetry.sdk.metrics._internal.instrument import Histogram

        from app.telemetry.request_duration import RequestDurations

        RequestDurations.record = lambda self, *args, **kwargs: None
        Histogram.record = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    if "access-log" in parts:
        from app.telemetry.logging import GunicornJsonLogger

        GunicornJsonLogger.access = lambda self, *args, **kwargs: None
