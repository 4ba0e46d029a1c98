"""Probes, the Prometheus scrape endpoint and the OpenAPI document: no auth, no tracing."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.http.api import services
from app.http.openapi import openapi_document
from app.http.problems import problem

probes = Blueprint("probes", __name__)
bp = Blueprint("health", __name__)


@probes.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@probes.get("/readyz")
def readyz() -> Response:
    reasons = services().readiness()
    if reasons:
        resp = problem(503, "Not ready", "; ".join(reasons))
        resp.headers["Retry-After"] = "1"
        return resp
    return jsonify({"status": "ready"})


@probes.get("/metrics")
def metrics() -> Response:
    from app.telemetry.prometheus_bridge import render_metrics

    body, content_type = render_metrics()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
