"""The gunicorn shape every measured server has: the service's (app/gunicorn_server.py), copied, not imported,
so that the bench depends on the service only through its settings, CLI and /metrics."""

WORKERS = 2  # WEB_CONCURRENCY, set explicitly for the service
HTTP_THREADS = 8  # HTTP_THREADS, likewise
# Hard-coded in app/gunicorn_server.py's load_config rather than settings: keep these in step with it.
# The service's worker class is a gthread subclass that balances accepts between workers
# (app.runtime.balanced_worker, an internal the bench does not import); the bare app runs plain gthread,
# and the report's per-worker CPU shares show what that changes.
WORKER_CLASS = "gthread"
KEEPALIVE_S = 5
TIMEOUT_S = 30
GRACEFUL_TIMEOUT_S = 20  # GRACEFUL_TIMEOUT_S's default
