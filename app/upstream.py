"""The quotes dependency (`python -m app upstream`): a small HTTP service with run-time fault injection.

It exists so that the API's timeout, retries, circuit breaker, stale fallback, alerts and Tempo's service
graph have something real to react to. Prices are a deterministic walk per symbol, so they look alive.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass

import flask
from flask import Flask, Response, jsonify, request

from app.domain.auth import Authenticator
from app.domain.edge import EdgePolicy
from app.domain.errors import InvalidArgument
from app.http import access_log, edge, inputs, problems
from app.http.health import healthz, metrics
from app.settings import Settings

SYMBOL_RE = re.compile(r"[A-Z]{1,8}")  # fullmatch


@dataclass(frozen=True)
class UpstreamFaults:
    error_rate: float = 0.0
    latency_ms: int = 0
    expires_at: float = 0.0


class FaultState:
    """In-memory: the upstream is one process (one gunicorn worker with threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = UpstreamFaults()

    def get(self) -> UpstreamFaults:
        with self._lock:
            if self._faults.expires_at and time.time() > self._faults.expires_at:
                self._faults = UpstreamFaults()
            return self._faults

    def set(self, body: dict[str, object]) -> UpstreamFaults:
        if body.get("reset"):
            with self._lock:
                self._faults = UpstreamFaults()
                return self._faults
        current = self.get()
        error_rate = body.get("error_rate", current.error_rate)
        latency_ms = body.get("latency_ms", current.latency_ms)
        ttl_s = body.get("ttl_s", 300)
        if (
            isinstance(error_rate, bool)
            or not isinstance(error_rate, int | float)
            or not 0 <= error_rate <= 1
        ):
            raise InvalidArgument("'error_rate' must be a number from 0 to 1", field="error_rate")
        if isinstance(latency_ms, bool) or not isinstance(latency_ms, int) or not 0 <= latency_ms <= 30_000:
            raise InvalidArgument("'latency_ms' must be an integer from 0 to 30000", field="latency_ms")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= 3600:
            raise InvalidArgument("'ttl_s' must be an integer from 1 to 3600", field="ttl_s")
        with self._lock:
            self._faults = UpstreamFaults(float(error_rate), latency_ms, time.time() + ttl_s)
            return self._faults


def price_of(symbol: str, now: float) -> float:
    seed = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:4], "big")
    base = 20 + seed % 480
    return round(base * (1 + 0.02 * math.sin(now / 30 + seed)), 2)


def create_upstream_app(settings: Settings, *, instance_id: str | None = None) -> Flask:
    app = flask.Flask("upstream")  # looked up now: see app.http.create_app
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    faults = FaultState()
    access_log.init_app(app)
    problems.init_app(app)
    # The same edge as the API's: request context, headers, and admin-scoped bearer tokens for /chaos.
    edge.init_app(app, EdgePolicy(Authenticator(settings)), instance_id or str(os.getpid()))

    @app.get("/v1/quotes/<symbol>")
    def quote(symbol: str) -> Response:
        if not SYMBOL_RE.fullmatch(symbol):
            raise InvalidArgument("symbol must be 1 to 8 capital letters", field="symbol")
        state = faults.get()
        if state.latency_ms:
            time.sleep(state.latency_ms / 1000)
        if state.error_rate and random.random() < state.error_rate:
            return problems.problem(503, "Injected fault", "upstream failure injected by /chaos")
        now = time.time()
        return jsonify({"symbol": symbol, "price": price_of(symbol, now), "currency": "USD", "as_of": now})

    @app.route("/chaos", methods=["GET", "POST"])
    @edge.requires("admin")
    def chaos() -> Response:
        if request.method == "POST":
            return jsonify(asdict(faults.set(inputs.json_body())))
        return jsonify(asdict(faults.get()))

    app.add_url_rule("/healthz", view_func=healthz)
    app.add_url_rule("/metrics", view_func=metrics)
    return app
