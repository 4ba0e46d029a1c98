"""The gunicorn deployment of one role: its settings, and hooks that only start and stop the built worker.

In the master (`run`): the telemetry environment is set for the workers (OTEL_SERVICE_NAME, resource
attributes, the platform distro, the /metrics directory), logging becomes JSON, and gunicorn forks; the
master itself owns no thread, socket client or gRPC object and is never instrumented.

Workers are gthread workers with a balanced accept (app.runtime.balanced_worker): a new HTTP connection
goes to the worker that holds the fewest. In each worker: gunicorn loads the WSGI app through
`GunicornServer.load`, which is `app.worker.build_worker` (telemetry, services, WSGI app);
`post_worker_init` starts what it built (gRPC server, probes) and chains SIGTERM to its drain;
`worker_exit` stops it within the graceful timeout. The master's `child_exit` marks the dead worker for
/metrics. The built worker lives on gunicorn's application object
(`worker.app.built`), per process: no module global carries anything from one hook to another.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from app.runtime.balanced_worker import BalancedThreadWorker, ConnectionBoard
from app.settings import Settings
from app.telemetry import environment
from app.telemetry.distro import prefork_problems
from app.telemetry.logging import configure_logging
from app.telemetry.prometheus_bridge import mark_worker_dead, prepare_multiproc_dir
from app.worker import API, Role, Worker, build_worker

SERVICE_NAMESPACE = "platform"


class JsonErrorLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own log through the root logger's JSON handler (set up by `run`), not its own one."""

    def setup(self, cfg: Any) -> None:  # also runs on every SIGHUP reload
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, role: Role) -> None:
        self.settings = settings
        self.role = role
        self.built: Worker | None = None
        # Connections per worker, for the balanced accept: room for a full set of workers twice over, as
        # during a rolling reload old and new workers overlap.
        self.board = ConnectionBoard(2 * role.workers(settings) + 2)
        super().__init__()

    def load_config(self) -> None:
        settings, role = self.settings, self.role
        options: dict[str, Any] = {
            "bind": [f"{settings.bind_host}:{role.port(settings)}"],
            "workers": role.workers(settings),
            "worker_class": BalancedThreadWorker,
            "threads": role.threads(settings),
            # From the master's SIGTERM to its SIGKILL: the drain delay, then the drain itself.
            "graceful_timeout": math.ceil(settings.drain_delay_s + settings.graceful_timeout_s),
            "timeout": 30,
            "keepalive": 5,
            # Request heads (docs/reliability.md, "Limits"): gunicorn's defaults, stated. Past them the
            # worker answers 414 / 431 problem+json (app.runtime.head_first), which also caps a whole
            # head at 32 KiB and its arrival at 10 s.
            "limit_request_line": 4094,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            "proc_name": f"platform-{role.name}",
            # Access lines come from the app, inside the request's span (app.http.access_log).
            "accesslog": None,
            "logger_class": JsonErrorLogger,
            "pre_fork": pre_fork,
            "post_worker_init": post_worker_init,
            "worker_exit": worker_exit,
            "child_exit": child_exit,
            # gunicorn 23+'s control socket has one default path per user: two deployments on one host
            # (API + upstream, or parallel tests) would fight over it, and nothing here uses it.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """In the worker, after fork: build everything it serves."""
        self.built = build_worker(self.settings, self.role)
        return self.built.wsgi


def pre_fork(server: Any, worker: Any) -> None:
    worker.slot = server.app.board.claim()


def post_worker_init(worker: Any) -> None:
    from app.rpc.server import GrpcBindError

    built: Worker = worker.app.built
    try:
        built.start()
    except GrpcBindError as exc:
        # A port conflict is the operator's to fix: one clear line, no traceback, and gunicorn's
        # "worker failed to boot" exit code, which stops the master instead of respawning in a loop.
        worker.log.error("%s", exc)
        built.stop(1.0)
        sys.exit(Arbiter.WORKER_BOOT_ERROR)

    # gunicorn's own SIGTERM handler stops accepting and drains HTTP. Ours comes first: readiness turns 503
    # at once, both transports keep serving for the drain delay, then gRPC and HTTP drain together.
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def drain(signum: int, frame: Any) -> None:
        built.drain()
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)  # sets a flag and wakes gthread's loop: safe from this thread

    def on_sigterm(signum: int, frame: Any) -> None:
        if built.begin_shutdown():
            threading.Timer(built.settings.drain_delay_s, drain, (signum, frame)).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server: Any, worker: Any) -> None:
    built: Worker | None = worker.app.built
    if built is not None:
        built.stop(built.settings.graceful_timeout_s)


def child_exit(server: Any, worker: Any) -> None:
    server.app.board.release(worker.slot)
    mark_worker_dead(worker.pid)


def telemetry_environment(settings: Settings, role: Role) -> None:
    """What the workers' OpenTelemetry reads, derived from the settings; explicit OTEL_* values win."""
    os.environ.setdefault("OTEL_SERVICE_NAME", role.service_name)
    given = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    present = {pair.split("=", 1)[0].strip() for pair in given.split(",") if "=" in pair}
    ours = {
        "service.namespace": SERVICE_NAMESPACE,
        "service.version": settings.service_version,
        "deployment.environment.name": settings.app_env,
    }
    extra = [f"{key}={value}" for key, value in ours.items() if key not in present]
    os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(part for part in (given, *extra) if part)
    os.environ.setdefault("OTEL_PYTHON_DISTRO", "platform")
    os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "platform")
    # /metrics always works: a private directory unless the operator chose one.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix=f"platform-{role.name}-metrics-"
    )
    prepare_multiproc_dir(path)


def configuration_problems(settings: Settings, role: Role) -> list[str]:
    """Bad OTEL_* values, another distro in charge, a port another process holds: each one line, reported
    before anything starts."""
    env = dict(os.environ)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", "(a private directory)")  # run() always provides one
    return environment.problems(env) + prefork_problems() + ports_in_use(settings, role)


def ports_in_use(settings: Settings, role: Role) -> list[str]:
    """Listen addresses another process holds. Checked in the master before forking: gunicorn would retry
    a taken HTTP port for 5 s and then exit without naming it, and a taken gRPC port would only show in a
    worker. A port taken between this check and the bind still fails, in gunicorn's or the worker's way."""
    problems = []
    for setting, port, shared in role.listeners(settings):
        try:
            # As the servers bind: SO_REUSEADDR (gunicorn), and SO_REUSEPORT where the workers share one.
            family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
            socket.create_server((settings.bind_host, port), family=family, reuse_port=shared).close()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            problems.append(
                f"{setting}={port}: cannot listen on {settings.bind_host}:{port}: {reason} "
                f"(another process holds the port, or BIND_HOST is not a local address)"
            )
    return problems


def run(settings: Settings, role: Role = API) -> int:
    """Start the master; returns its exit code when it stops. Call `configuration_problems()` first."""
    telemetry_environment(settings, role)
    configure_logging()
    try:
        GunicornServer(settings, role).run()
    except SystemExit as stop:  # gunicorn's arbiter ends by sys.exit(code)
        return stop.code if isinstance(stop.code, int) else 1
    return 0
