"""gunicorn worker lifecycle hooks: the only place where a worker's telemetry and runtime begin and end.

Order inside a worker: post_fork (telemetry) -> app factory (services) -> post_worker_init (gRPC server,
probes, SIGTERM hook) -> serve -> worker_exit (drain, flush). The master only prepares the Prometheus
multiprocess directory and marks dead workers; it never owns a thread, socket client or gRPC object.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Role:
    """What this gunicorn deployment serves; set in the master before fork, inherited by workers."""

    name: str  # "api" | "upstream"
    service_name: str
    settings: Settings
    metrics_dir: str


ROLE: Role | None = None
_worker: dict[str, Any] = {}  # per worker process: telemetry, runtime


def on_starting(server: Any) -> None:
    from app.telemetry.prometheus_bridge import prepare_multiproc_dir

    assert ROLE is not None
    prepare_multiproc_dir(ROLE.metrics_dir)


def post_fork(server: Any, worker: Any) -> None:
    from app.telemetry.logging import configure_logging
    from app.telemetry.setup import init_telemetry

    assert ROLE is not None
    _worker["telemetry"] = init_telemetry(
        ROLE.settings, service_name=ROLE.service_name, prometheus_multiproc_dir=ROLE.metrics_dir
    )
    configure_logging(ROLE.service_name)


def instance_id() -> str:
    telemetry = _worker.get("telemetry")
    return str(telemetry.instance_id) if telemetry is not None else ""


def post_worker_init(worker: Any) -> None:
    assert ROLE is not None
    if ROLE.name != "api":
        return
    from gunicorn.arbiter import Arbiter

    from app.rpc.server import GrpcBindError
    from app.runtime.worker import WorkerRuntime

    services = worker.wsgi.extensions["platform"]
    runtime = WorkerRuntime(ROLE.settings, services, instance_id())
    try:
        runtime.start()
    except GrpcBindError as exc:
        # A port conflict is the operator's to fix: one clear line, no traceback, and gunicorn's
        # "worker failed to boot" exit code, which stops the master instead of respawning in a loop.
        worker.log.error("%s", exc)
        runtime.stop(1.0)
        sys.exit(Arbiter.WORKER_BOOT_ERROR)
    _worker["runtime"] = runtime

    # gunicorn's own SIGTERM handler stops accepting and drains HTTP; run ours first so that readiness
    # turns 503 and the gRPC server starts its drain at the same moment.
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        runtime.begin_shutdown()
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server: Any, worker: Any) -> None:
    assert ROLE is not None
    grace = ROLE.settings.graceful_timeout_s
    runtime = _worker.pop("runtime", None)
    if runtime is not None:
        runtime.stop(grace)
    telemetry = _worker.pop("telemetry", None)
    if telemetry is not None:
        telemetry.shutdown(timeout_s=min(5.0, grace))


def child_exit(server: Any, worker: Any) -> None:
    from app.telemetry.prometheus_bridge import mark_worker_dead

    mark_worker_dead(worker.pid)
