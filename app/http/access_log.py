"""One access line per HTTP request, logged while the request's span is current so it carries the trace.

A plain record of logger `app.http.access` with the fields of docs/telemetry.md (method, path, status,
duration_ms, remote_addr, user_agent; request id and user come with every record of a request). It goes
wherever the root logger's handlers send it: JSON on stdout, and over OTLP when OTLP_ACCESS_LOGS is set.
Client-supplied fields are scrubbed like every other record (app.telemetry.logging).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

LOGGER = "app.http.access"

log = logging.getLogger(LOGGER)


def init_app(app: Flask) -> None:
    """Register first, so that the start time is taken before any other request hook runs."""

    @app.before_request
    def _start() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def _access_line(response: Response) -> Response:
        if log.isEnabledFor(logging.INFO):
            elapsed_ms = (time.perf_counter() - g.get("access_started", time.perf_counter())) * 1000.0
            environ = request.environ
            log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed_ms, 3),
                    "remote_addr": environ.get("REMOTE_ADDR", ""),
                    "user_agent": environ.get("HTTP_USER_AGENT", ""),
                },
            )
        return response
