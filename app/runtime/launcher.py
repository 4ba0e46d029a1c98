"""Runs a gunicorn master for one role ("api" or "upstream") with settings already validated."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from app import gunicorn_conf
from app.settings import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], factory: Callable[[], Any]) -> None:
        self._options = options
        self._factory = factory
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._factory()


def metrics_dir(role: str) -> str:
    """PROMETHEUS_MULTIPROC_DIR if set, else a private temp dir so that /metrics always works."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix=f"platform-{role}-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def run(settings: Settings, role: str) -> None:
    if role == "api":
        port, workers, service_name = settings.http_port, settings.web_concurrency, "platform-api"

        def factory() -> Any:
            from app.http import create_app

            return create_app(settings, instance_id=gunicorn_conf.instance_id())
    else:
        port, workers, service_name = settings.upstream_port, 1, "quotes-upstream"

        def factory() -> Any:
            from app.upstream import create_upstream_app

            return create_upstream_app(settings)

    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    gunicorn_conf.ROLE = gunicorn_conf.Role(role, service_name, settings, metrics_dir(role))
    options = {
        "bind": [f"{settings.bind_host}:{port}"],
        "workers": workers,
        "worker_class": "gthread",
        "threads": settings.http_threads if role == "api" else 16,
        "graceful_timeout": math.ceil(settings.graceful_timeout_s),
        "timeout": 30,
        "keepalive": 5,
        "proc_name": f"platform-{role}",
        "logger_class": "app.telemetry.logging.GunicornJsonLogger",
        "accesslog": "-",
        "errorlog": "-",
        "on_starting": gunicorn_conf.on_starting,
        "post_fork": gunicorn_conf.post_fork,
        "post_worker_init": gunicorn_conf.post_worker_init,
        "worker_exit": gunicorn_conf.worker_exit,
        "child_exit": gunicorn_conf.child_exit,
        # gunicorn 23+'s control socket has one default path per user: two deployments on one host
        # (API + upstream, or parallel tests) would fight over it, and nothing here uses it.
        "control_socket_disable": True,
    }
    _Gunicorn(options, factory).run()
