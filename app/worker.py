"""Builds one worker from settings and role: the one place where the service's parts are wired together.

`build_worker(settings, role)` runs in each worker process right after fork (app.gunicorn_server calls it
from its app loader) and returns a `Worker`: its telemetry, its `Services` (the API), its WSGI app and,
for the API, its gRPC server and runtime probes. The gunicorn hooks only start and stop what it returned:

    fork -> build_worker (telemetry, services, WSGI app) -> Worker.start (gRPC, probes)
         -> serve -> SIGTERM: Worker.begin_shutdown (readiness 503, still serving)
         -> after DRAIN_DELAY_S: Worker.drain (gRPC and HTTP stop taking work) -> Worker.stop (flush)

Nothing here runs in the process that forks the workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from app.domain import context
from app.domain.auth import Authenticator
from app.domain.chaos import ChaosControl
from app.domain.compute import POOL_TASKS, ComputeService
from app.domain.crypto import CryptoService
from app.domain.edge import EdgePolicy
from app.domain.items import ItemStore
from app.domain.job_kinds import JobKinds
from app.domain.job_service import JobService
from app.domain.jobs import Backoff, JobQueue
from app.domain.quotes import QuoteService
from app.domain.services import Services
from app.http import access_log
from app.resilience.ratelimit import RateLimiter
from app.runtime import handover
from app.runtime.chaos_injector import ChaosInjector
from app.runtime.job_consumer import JobConsumer
from app.runtime.pool import WorkerPool
from app.runtime.probes import LoopLagProbe, WakeupDelaySampler
from app.settings import Settings
from app.telemetry import logging as telemetry_logging
from app.telemetry import prometheus_bridge
from app.telemetry.distro import WorkerTelemetry, start_worker

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from app.rpc.server import GrpcServer

log = logging.getLogger(__name__)

# Redis connections beyond the request threads: invalidation listener, readiness, chaos, rate limiter.
EXTRA_REDIS_CONNECTIONS = 4
REDIS_HEALTH_CHECK_INTERVAL_S = 30


@dataclass(frozen=True)
class Role:
    """What a deployment serves: `API` (HTTP + gRPC), `JOBS` (the job consumers, with probes and /metrics
    over HTTP) or `UPSTREAM` (the quotes dependency)."""

    name: str
    service_name: str

    def port(self, settings: Settings) -> int:
        return {API: settings.http_port, JOBS: settings.jobs_port}.get(self, settings.upstream_port)

    def listeners(self, settings: Settings) -> list[tuple[str, int, bool]]:
        """(setting, port, shared by the workers through SO_REUSEPORT) for every port it listens on."""
        if self is API:
            return [("HTTP_PORT", settings.http_port, False), ("GRPC_PORT", settings.grpc_port, True)]
        if self is JOBS:
            return [("JOBS_PORT", settings.jobs_port, False)]
        return [("UPSTREAM_PORT", settings.upstream_port, False)]

    def workers(self, settings: Settings) -> int:
        return {API: settings.web_concurrency, JOBS: settings.jobs_processes}.get(self, 1)

    def threads(self, settings: Settings) -> int:
        return {API: settings.http_threads, JOBS: 4}.get(self, 16)


API = Role("api", "platform-api")
UPSTREAM = Role("upstream", "quotes-upstream")
JOBS = Role("jobs", "platform-jobs")


def build_services(settings: Settings) -> Services:
    """Wire every operation for one worker. Opens nothing yet; `Services.start()` does, in the worker."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.http_threads + settings.grpc_handler_threads + EXTRA_REDIS_CONNECTIONS,
        timeout=settings.redis_timeout_s,  # waiting for a free connection is bounded too
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )
    client = redis.Redis(connection_pool=pool)
    chaos = ChaosControl(client)
    worker_pool = WorkerPool(
        settings.pool_processes,
        settings.pool_queue_size,
        settings.pool_task_timeout_s,
        preload=["app.domain.compute"],
        tasks=POOL_TASKS,
    )
    auth = Authenticator(settings)
    ratelimiter = RateLimiter(settings, connection_pool=pool)
    items = ItemStore(client, settings, chaos)
    compute = ComputeService(worker_pool)
    queue = JobQueue(
        client,
        max_attempts=settings.jobs_max_attempts,
        visibility_timeout_s=settings.jobs_visibility_timeout_s,
        max_queued=settings.jobs_max_queued,
        backoff=Backoff(settings.jobs_retry_base_s, settings.jobs_retry_cap_s),
    )
    return Services(
        settings=settings,
        redis=client,
        items=items,
        crypto=CryptoService.from_settings(settings),
        compute=compute,
        quotes=QuoteService(settings),
        auth=auth,
        ratelimiter=ratelimiter,
        edge=EdgePolicy(auth, ratelimiter),
        chaos=chaos,
        pool=worker_pool,
        jobs=JobService(queue, JobKinds(compute, items)),
    )


@dataclass(eq=False)
class Worker:
    """One worker's parts; `start`, `begin_shutdown` and `stop` are all the gunicorn hooks call."""

    settings: Settings
    role: Role
    telemetry: WorkerTelemetry
    wsgi: WSGIApplication
    services: Services | None = None
    grpc: GrpcServer | None = None
    consumer: JobConsumer | None = None
    _background: list[LoopLagProbe | WakeupDelaySampler | ChaosInjector] = field(default_factory=list)
    _grpc_stopper: threading.Thread | None = None
    _shutdown_begun: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def instance_id(self) -> str:
        return self.telemetry.instance_id

    def start(self) -> None:
        """After the WSGI app is loaded: background parts, then the gRPC server (raises GrpcBindError)."""
        prometheus_bridge.write_now()
        services = self.services
        if services is None:
            return
        from app.rpc.server import GrpcServer

        services.start()
        if (consumer := self.consumer) is not None:
            consumer.start()
            services.add_readiness_check("job consumer stopped", lambda: consumer.running)
            log.info("worker ready", extra={"consumer": consumer.name})
            return
        self.grpc = grpc_server = GrpcServer(services, self.settings, self.instance_id)
        grpc_server.start()
        services.add_readiness_check("grpc not serving", lambda: grpc_server.serving)
        self._background = [
            LoopLagProbe(grpc_server.loop),
            WakeupDelaySampler(),
            ChaosInjector(services.chaos.get, grpc_server.loop),
        ]
        for part in self._background:
            part.start()
        log.info("worker ready", extra={"grpc_port": grpc_server.port})

    def begin_shutdown(self) -> bool:
        """SIGTERM: stop advertising readiness; keep serving until `drain`. False if already begun."""
        with self._lock:
            if self._shutdown_begun:
                return False
            self._shutdown_begun = True
        if self.services is not None:
            self.services.begin_shutdown()
        if self.consumer is not None:
            self.consumer.begin_shutdown()  # takes no new job; those in hand finish in `stop`
        return True

    def drain(self) -> None:
        """After the drain delay: the gRPC server stops taking calls and finishes those in flight, in parallel
        with gunicorn's HTTP drain."""
        self.begin_shutdown()
        with self._lock:
            if self._grpc_stopper is not None or self.grpc is None:
                return
            self._grpc_stopper = threading.Thread(
                target=self._stop_grpc, args=(self.grpc,), name="grpc-stop", daemon=True
            )
            self._grpc_stopper.start()

    def _stop_grpc(self, server: GrpcServer) -> None:
        # Hand the gRPC port over before closing it (see app.runtime.handover); half the grace at most.
        grace = self.settings.graceful_timeout_s
        handover.wait_for_successor(server.port, self.settings.web_concurrency, timeout_s=grace / 2)
        server.stop(grace / 2)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish shutting down within `timeout_s` (default: the graceful timeout), telemetry last."""
        budget = timeout_s or self.settings.graceful_timeout_s
        deadline = time.monotonic() + budget
        self.drain()
        if self._grpc_stopper is not None:
            self._grpc_stopper.join(max(0.0, deadline - time.monotonic()))
        elif self.grpc is not None:  # never began to serve (a failed start)
            self.grpc.stop(1.0)
        for part in self._background:
            part.stop()
        if self.consumer is not None:
            self.consumer.stop(max(0.0, deadline - time.monotonic() - 2.0))
        if self.services is not None:
            self.services.close(timeout=max(0.0, deadline - time.monotonic() - 1.0))
        self.telemetry.shutdown(timeout_s=max(0.5, min(5.0, deadline - time.monotonic())))


def build_worker(settings: Settings, role: Role) -> Worker:
    """Telemetry first (so that every part below is instrumented), then the role's parts."""
    telemetry = start_worker()
    telemetry_logging.set_context_fields(context.log_fields)
    if not settings.otlp_access_logs:
        telemetry_logging.exclude_from_otlp(access_log.LOGGER)
    _register_worker_gauges(settings)
    if role is UPSTREAM:
        from app.upstream import create_upstream_app

        return Worker(
            settings, role, telemetry, create_upstream_app(settings, instance_id=telemetry.instance_id)
        )
    from app.http import create_app, create_probe_app

    services = build_services(settings)
    if role is JOBS:
        consumer = JobConsumer(services.jobs, services.chaos, concurrency=settings.jobs_concurrency)
        probes = create_probe_app(services)
        return Worker(settings, role, telemetry, probes, services, consumer=consumer)
    return Worker(
        settings, role, telemetry, create_app(settings, services, instance_id=telemetry.instance_id), services
    )


def _register_worker_gauges(settings: Settings) -> None:
    meter = metrics.get_meter("app.worker")
    build_attributes = {"version": settings.service_version, "commit": settings.git_commit}

    def one_worker(_options: CallbackOptions) -> Iterable[Observation]:
        return (Observation(1),)

    def build_info(_options: CallbackOptions) -> Iterable[Observation]:
        return (Observation(1, build_attributes),)

    meter.create_observable_gauge(
        "platform.workers", callbacks=[one_worker], unit="{worker}", description="Live worker processes"
    )
    meter.create_observable_gauge(
        "platform.build.info", callbacks=[build_info], description="Build version and commit (always 1)"
    )
