"""The platform's OpenTelemetry distro: auto-instrumentation that works under a preforking server.

Registered through the standard entry points (pyproject.toml):
`opentelemetry_distro` and `opentelemetry_configurator` `platform`, plus `platform_flask` and
`platform_grpc_aio_server` (instrumentors) and `prometheus_multiprocess` (a metric exporter). Two ways to
start, one result:

    python -m app serve                              # the worker lifecycle calls start_worker()
    opentelemetry-instrument python -m app serve     # the same, plus the standard sitecustomize start

The rule that makes both safe under gunicorn: **only a worker is instrumented.** `start_worker()`, called
by each worker right after fork, marks the process and runs the standard auto-instrumentation
(`opentelemetry.instrumentation.auto_instrumentation.initialize`): this distro sets its defaults
(app.telemetry.environment), the configurator builds the SDK from the OTEL_* variables (stock
opentelemetry-distro configurator: exporters by entry point, sampler, resource), and the instrumentors
found by entry point patch their libraries. Any other process, above all a gunicorn master that
`opentelemetry-instrument` started, gets nothing: no provider, no thread, no socket, no patched library,
so nothing is initialised or exported before fork, and every worker builds its own providers with its
own `service.instance.id`. A user's own gunicorn app gets the same by calling
`start_worker()` in its `post_fork` hook.

What the distro chooses beyond the defaults: the platform Flask and gRPC aio server instrumentors instead
of contrib's (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=platform_flask brings contrib's Flask one back,
`flask` disables both; likewise `platform_grpc_aio_server` and `grpc_aio_server`), the
contract's four process metrics instead of the system-metrics instrumentation's ~40, and filters on the
OTLP log handler (app.telemetry.logging.prepare_otlp_handlers). OTEL_SDK_DISABLED=true leaves the worker
uninstrumented too: nothing it would record could go anywhere.

Several distros can be installed (opentelemetry-distro brings its own); OTEL_PYTHON_DISTRO and
OTEL_PYTHON_CONFIGURATOR choose. `start_worker()` defaults both to `platform`; a process started by
`opentelemetry-instrument` needs them in its environment (the Dockerfile sets them), and
`prefork_problems()` says so at start instead of letting another distro instrument the master.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.distro import OpenTelemetryConfigurator
from opentelemetry.instrumentation.auto_instrumentation import initialize
from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from app.telemetry import environment
from app.telemetry.logging import prepare_otlp_handlers

NAME = "platform"  # the entry point name of the distro and the configurator
FLASK = "flask"  # contrib's instrumentor entry points
GRPC_AIO_SERVER = "grpc_aio_server"
PLATFORM_FLASK = "platform_flask"  # this project's, each loaded instead of one of contrib's
PLATFORM_GRPC_AIO_SERVER = "platform_grpc_aio_server"
REPLACES = {PLATFORM_FLASK: FLASK, PLATFORM_GRPC_AIO_SERVER: GRPC_AIO_SERVER}
# Exactly the process metrics of the telemetry contract (docs/telemetry.md).
PROCESS_METRICS: dict[str, list[str] | None] = {
    "process.cpu.time": ["user", "system"],
    "process.memory.usage": None,
    "process.thread.count": None,
    "cpython.gc.collections": None,
}

_log = logging.getLogger(__name__)
_worker_pid: int | None = None  # the process start_worker() set up
_configured_pid: int | None = None  # where this distro's defaults were applied


def _in_worker() -> bool:
    return _worker_pid == os.getpid() and not _sdk_disabled()


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class PlatformDistro(BaseDistro):  # type: ignore[misc]
    def _configure(self, **kwargs: Any) -> None:
        global _configured_pid
        _configured_pid = os.getpid()
        environment.apply_defaults()
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", NAME)

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if not _in_worker():
            return  # a process that forks workers patches nothing
        disabled = set(environment.listed(os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")))
        name = entry_point.name
        if any(
            (name == contrib and ours not in disabled) or (name == ours and contrib in disabled)
            for ours, contrib in REPLACES.items()
        ):
            return
        if name == "system_metrics":
            entry_point.load()(config=PROCESS_METRICS).instrument(**kwargs)
            return
        super().load_instrumentor(entry_point, **kwargs)
        if name == "logging":
            prepare_otlp_handlers()


class PlatformConfigurator(OpenTelemetryConfigurator):
    """The stock SDK configurator, run in workers only (see the module docstring); each worker's resource
    also says which process it is (`process.pid`, as its log lines do)."""

    def configure(self, **kwargs: Any) -> None:
        if _in_worker():
            attributes = {"process.pid": os.getpid(), **(kwargs.pop("resource_attributes", None) or {})}
            super().configure(resource_attributes=attributes, **kwargs)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class WorkerTelemetry:
    """What one worker's telemetry is known by, and a bounded way to flush and stop it."""

    instance_id: str

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and stop the providers in parallel, returning within `timeout_s`; True if all finished.

        A dead collector cannot hold the worker past its graceful timeout: what is still queued at the
        deadline is abandoned with the process.
        """
        jobs: list[Callable[[], object]] = []
        meter_provider = metrics.get_meter_provider()
        if isinstance(meter_provider, SdkMeterProvider):
            jobs.append(lambda: meter_provider.shutdown(timeout_millis=max(0.0, timeout_s * 1000)))
        for provider in (trace.get_tracer_provider(), _logs.get_logger_provider()):
            if isinstance(provider, SdkTracerProvider | SdkLoggerProvider):
                jobs.append(provider.shutdown)
        threads = [
            threading.Thread(target=_quietly(job), name="telemetry-shutdown", daemon=True) for job in jobs
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


def start_worker() -> WorkerTelemetry:
    """Set up OpenTelemetry in this worker process, right after fork, through the standard machinery."""
    global _worker_pid
    if _worker_pid == os.getpid():
        raise RuntimeError("start_worker() runs once per worker process")
    if isinstance(trace.get_tracer_provider(), SdkTracerProvider):
        raise RuntimeError(
            "OpenTelemetry was set up before this worker started (in the process that forked it, by another "
            f"distro); set OTEL_PYTHON_DISTRO={NAME} and OTEL_PYTHON_CONFIGURATOR={NAME}"
        )
    os.environ.setdefault("OTEL_PYTHON_DISTRO", NAME)
    os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", NAME)
    _worker_pid = os.getpid()
    # With opentelemetry-distro installed too, the stock loader warns once per worker that it did not load
    # that distro's configurator: expected here, so only its errors are let through.
    loader = logging.getLogger("opentelemetry.instrumentation.auto_instrumentation._load")
    level = loader.level
    loader.setLevel(max(level, logging.ERROR))
    try:
        initialize(swallow_exceptions=False)
    finally:
        loader.setLevel(level)
    return WorkerTelemetry(instance_id=_instance_id())


def prefork_problems() -> list[str]:
    """Why this process must not fork instrumented workers; [] when it may.

    Call in the process that forks, before it does: when `opentelemetry-instrument` started it, this
    distro must be the one its sitecustomize loaded, and nothing may have set up an SDK provider here.
    """
    found = []
    if _started_by_opentelemetry_instrument() and _configured_pid != os.getpid():
        found.append(
            "opentelemetry-instrument loaded another OpenTelemetry distro: set "
            f"OTEL_PYTHON_DISTRO={NAME} and OTEL_PYTHON_CONFIGURATOR={NAME}"
        )
    if isinstance(trace.get_tracer_provider(), SdkTracerProvider):
        found.append(
            "OpenTelemetry providers were set up before the workers exist; they belong in each worker"
        )
    return found


def _started_by_opentelemetry_instrument() -> bool:
    """`opentelemetry-instrument` works through a `sitecustomize` module of its own, run at start."""
    module = sys.modules.get("sitecustomize")
    return "auto_instrumentation" in str(getattr(module, "__file__", ""))


def _instance_id() -> str:
    resource = getattr(trace.get_tracer_provider(), "resource", None)
    if resource is not None and resource.attributes.get(SERVICE_INSTANCE_ID):
        return str(resource.attributes[SERVICE_INSTANCE_ID])
    return str(uuid.uuid4())  # telemetry off: still one id per worker, for X-Instance-Id


def _quietly(job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            _log.warning("telemetry provider shutdown failed", exc_info=True)

    return run


__all__ = ["PlatformConfigurator", "PlatformDistro", "WorkerTelemetry", "prefork_problems", "start_worker"]
