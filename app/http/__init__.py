"""Flask app factory: one place where the HTTP side is wired (Flask tutorial style, `init_app` per part)."""

from __future__ import annotations

import os

from flask import Flask

from app.domain.services import Services
from app.settings import Settings, load_settings
from app.worker import build_services


def create_app(
    settings: Settings | None = None, services: Services | None = None, *, instance_id: str | None = None
) -> Flask:
    """Build the WSGI app. Under gunicorn this runs in each worker, after fork and after telemetry."""
    from app.http import admin, api, edge, health, problems

    settings = settings or load_settings()
    app = Flask("app")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,  # Werkzeug answers 413 past this, before reading it
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    services = services or build_services(settings)
    app.extensions["platform"] = services
    app.extensions["platform.settings"] = settings

    problems.init_app(app)
    edge.init_app(app, services.edge, instance_id or str(os.getpid()))
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    _instrument(app)
    return app


def _instrument(app: Flask) -> None:
    try:
        from app.telemetry.setup import instrument_flask_app
    except ImportError:  # pragma: no cover - telemetry is part of the package
        return
    instrument_flask_app(app)
