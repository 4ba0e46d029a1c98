"""Flask app factory: one place where the HTTP side is wired (Flask tutorial style, `init_app` per part)."""

from __future__ import annotations

import flask
from flask import Flask

from app.domain.services import Services
from app.settings import Settings


def create_app(settings: Settings, services: Services, *, instance_id: str) -> Flask:
    """The WSGI app over `services`. Under gunicorn: in each worker, after fork and after telemetry."""
    from app.http import access_log, admin, api, edge, health, jobs, problems

    # flask.Flask looked up now, not at import: an instrumentation that replaces the class (contrib's
    # FlaskInstrumentor does, in each worker) must see this app, even if this module was imported before.
    app = flask.Flask("app")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,  # Werkzeug answers 413 past this, before reading it
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    app.extensions["platform"] = services
    app.extensions["platform.settings"] = settings

    access_log.init_app(app)
    problems.init_app(app)
    edge.init_app(app, services.edge, instance_id)
    app.register_blueprint(health.probes)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(jobs.bp)
    return app


def create_probe_app(services: Services) -> Flask:
    """Probes and /metrics alone, for a deployment that serves no API (the job consumers)."""
    from app.http import health, problems

    app = flask.Flask("app")
    app.extensions["platform"] = services
    problems.init_app(app)
    app.register_blueprint(health.probes)
    return app
