"""gunicorn config with the service's own telemetry: the hooks of app.gunicorn_conf, JSON access log."""

import os

from app import gunicorn_conf
from app.settings import load_settings

# The same server settings as the baseline, so that only the telemetry differs.
from bench.gunicorn_bare import bind, keepalive, threads, worker_class, worker_connections, workers  # noqa: F401

accesslog = "-"
logger_class = "app.telemetry.logging.GunicornJsonLogger"

gunicorn_conf.ROLE = gunicorn_conf.Role(
    "bench", "platform-bench", load_settings(), os.environ["PROMETHEUS_MULTIPROC_DIR"]
)
on_starting = gunicorn_conf.on_starting
post_fork = gunicorn_conf.post_fork
worker_exit = gunicorn_conf.worker_exit
child_exit = gunicorn_conf.child_exit
