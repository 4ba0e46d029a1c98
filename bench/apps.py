"""The endpoint every throughput variant serves: a small JSON response, no I/O, as in a health-style route."""

from __future__ import annotations

from flask import Flask, Response, jsonify


def bare() -> Flask:
    """Uninstrumented baseline."""
    app = Flask("bench")

    @app.get("/hello/<name>")
    def hello(name: str) -> Response:
        return jsonify({"hello": name, "n": len(name)})

    return app


def shipped() -> Flask:
    """The same app with exactly the HTTP instrumentation the service ships (app.telemetry)."""
    from app.telemetry.setup import instrument_flask_app

    app = bare()
    instrument_flask_app(app)
    return app
