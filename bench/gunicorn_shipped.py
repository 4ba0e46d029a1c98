"""gunicorn config with the service's own telemetry: the hooks of app.gunicorn_conf, JSON access log."""

import os

from app import gunicorn_conf
from app.settings import load_settings

bind = f"127.0.0.1:{os.environ['BENCH_PORT']}"
workers = 2
worker_class = "gthread"
threads = 8
keepalive = 5
# wrk opens all its connections at once; without a cap one worker can take them all (bimodal results).
# 16 per worker with wrk -c32 spreads them evenly over the 2 workers in every variant.
worker_connections = 16
accesslog = "-"
logger_class = "app.telemetry.logging.GunicornJsonLogger"

gunicorn_conf.ROLE = gunicorn_conf.Role(
    "bench", "platform-bench", load_settings(), os.environ["PROMETHEUS_MULTIPROC_DIR"]
)
on_starting = gunicorn_conf.on_starting
post_fork = gunicorn_conf.post_fork
worker_exit = gunicorn_conf.worker_exit
child_exit = gunicorn_conf.child_exit
