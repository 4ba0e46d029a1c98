"""gunicorn config for the baseline and for `opentelemetry-instrument`: the service's worker settings."""

import os

bind = f"127.0.0.1:{os.environ['BENCH_PORT']}"
workers = 2
worker_class = "gthread"
threads = 8
keepalive = 5
# wrk opens all its connections at once; without a cap one worker can take them all (bimodal results).
# 16 per worker with wrk -c32 spreads them evenly over the 2 workers in every variant.
worker_connections = 16
