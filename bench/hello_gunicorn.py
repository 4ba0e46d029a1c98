"""gunicorn settings for bench/hello_app.py: exactly the service's (bench/deployment.py).

BENCH_BIND=127.0.0.1:PORT python -m gunicorn -c python:bench.hello_gunicorn bench.hello_app:app
"""

import os

from bench import deployment

bind = [os.environ["BENCH_BIND"]]
workers = deployment.WORKERS
worker_class = deployment.WORKER_CLASS
threads = deployment.HTTP_THREADS
keepalive = deployment.KEEPALIVE_S
timeout = deployment.TIMEOUT_S
graceful_timeout = deployment.GRACEFUL_TIMEOUT_S
accesslog = None  # the service's gunicorn writes none either (its access lines come from the app)
control_socket_disable = True
