"""alert-sink: the Alertmanager webhook receiver of the compose stack, so a person can see alerts arrive.

Every notification Alertmanager POSTs to /alerts becomes one readable log line per alert on stdout
(`docker compose logs -f alert-sink`); GET /alerts returns the most recent ones as JSON, GET /healthz
answers the container's healthcheck. Standard library only: it runs on the plain Python image.

    ALERT_SINK_BIND=127.0.0.1 ALERT_SINK_PORT=8085 python alertmanager/sink/alert_sink.py
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
RECENT_LIMIT = 200

log = logging.getLogger("alert-sink")


def _quote(value: object) -> str:
    """JSON-quote a label or annotation value so that newlines or quotes cannot forge log lines."""
    return json.dumps(str(value), ensure_ascii=False)


def describe(alert: Mapping[str, Any]) -> str:
    """One line for one alert: what fired, how bad, why, and where to look next."""
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    status = str(alert.get("status", "unknown")).upper()
    name = labels.get("alertname", "?")
    parts = [f"{status} {name}"]
    for key in sorted(labels):
        if key != "alertname":
            parts.append(f"{key}={_quote(labels[key])}")
    for key in ("summary", "description", "runbook_url", "dashboard"):
        if key in annotations:
            parts.append(f"{key}={_quote(annotations[key])}")
    parts.append(f"startsAt={alert.get('startsAt', '')}")
    if alert.get("status") == "resolved":
        parts.append(f"endsAt={alert.get('endsAt', '')}")
    return " ".join(parts)


def parse_notification(body: bytes) -> dict[str, Any]:
    """Validate an Alertmanager webhook payload (version 4); ValueError names what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise ValueError("'alerts' must be a list of objects")
    return payload


class AlertStore:
    """The most recent alerts, bounded: the sink may run for weeks."""

    def __init__(self, limit: int = RECENT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._alerts: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, payload: Mapping[str, Any]) -> None:
        with self._lock:
            for alert in payload["alerts"]:
                self._alerts.append({"receiver": payload.get("receiver", ""), **alert})

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._alerts)


class Handler(BaseHTTPRequestHandler):
    server_version = "alert-sink/1"
    store: AlertStore  # set by make_server

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        elif self.path in ("/", "/alerts"):
            self._reply(200, {"alerts": self.store.recent()})
        else:
            self._reply(404, {"error": f"no such path: {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/alerts":
            self._reply(404, {"error": f"no such path: {self.path}; Alertmanager posts to /alerts"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "Content-Length is required"})
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(413, {"error": f"body must be at most {MAX_BODY_BYTES} bytes"})
            return
        try:
            payload = parse_notification(self.rfile.read(length))
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})
            return
        log.info(
            "notification receiver=%s status=%s alerts=%d group=%s",
            _quote(payload.get("receiver", "")),
            payload.get("status", ""),
            len(payload["alerts"]),
            _quote(payload.get("groupLabels", {})),
        )
        for alert in payload["alerts"]:
            log.info("%s", describe(alert))
        self.store.add(payload)
        self._reply(200, {"received": len(payload["alerts"])})

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request access logs: the alerts themselves are what a person wants to read."""


def make_server(bind: str, port: int, store: AlertStore | None = None) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"store": store or AlertStore()})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    bind = os.environ.get("ALERT_SINK_BIND", "127.0.0.1")
    try:
        port = int(os.environ.get("ALERT_SINK_PORT", "8085"))
    except ValueError:
        print("error: ALERT_SINK_PORT must be an integer", file=sys.stderr)
        return 2
    server = make_server(bind, port)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever returns, so it must run off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s:%d; POST /alerts, GET /alerts, GET /healthz", bind, server.server_port)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
