"""gunicorn config for the baseline and for `opentelemetry-instrument`: the service's worker settings."""

import os

bind = f"127.0.0.1:{os.environ['BENCH_PORT']}"
workers = 2
worker_class = "gthread"
threads = 8
keepalive = 5
