"""Per-process OpenTelemetry setup: traces, metrics and logs, called in each worker after fork.

`init_telemetry` builds the three providers (and their exporter threads) in the calling process, so it must
run in the gunicorn worker (post_fork), never in the master: threads do not survive fork, and every worker
needs its own `service.instance.id`. That id comes from the SDK: `Resource.create` runs
`ServiceInstanceIdResourceDetector`, which draws a uuid4 per process id and draws again after a fork
(checked in opentelemetry-sdk 1.45.1, opentelemetry/sdk/resources/__init__.py), so it is never set here.

Where signals go:
- OTLP (grpc by default, or http/protobuf) only for signals whose endpoint is configured through the
  standard OTEL_EXPORTER_OTLP_* variables; spans and logs through bounded batch queues, metrics through a
  PeriodicExportingMetricReader (OTEL_METRIC_EXPORT_INTERVAL). No endpoint: no exporter, nothing queued.
- `/metrics`: a second metric reader writes prometheus_client multiprocess files when a directory is given
  (or PROMETHEUS_MULTIPROC_DIR is set); see app.telemetry.prometheus_bridge.
- Exporters passed in (tests) are attached synchronously (Simple processors, or the reader as given).

Tests: OpenTelemetry's global providers can be set once per process, so `set_global=False` builds an
independent set of providers (and skips the process-wide library instrumentation unless asked) that a test
uses directly; tests of the global path run init_telemetry in a subprocess.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import DropAggregation, ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_NAMESPACE,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from app.telemetry import exporters as exp
from app.telemetry.logging import (
    DEFAULT_SERVICE_NAME,
    attach_otlp_handler,
    detach_handler,
    stash_request_log_context,
)
from app.telemetry.metrics_fanout import FanOutMetricExporter, can_share_collection
from app.telemetry.prometheus_bridge import (
    MULTIPROC_ENV,
    PrometheusMultiprocessExporter,
    configure_default_dir,
)
from app.telemetry.request_duration import DURATION_BUCKETS_S, MergingMetricExporter, RequestDurations
from app.telemetry.request_duration import SCOPE as REQUEST_DURATION_SCOPE

if TYPE_CHECKING:
    from flask import Flask

    from app.settings import Settings

SERVICE_NAMESPACE_VALUE = "platform"
DEPLOYMENT_ENVIRONMENT = "deployment.environment"

# docs/telemetry.md: semconv HTTP buckets (DURATION_BUCKETS_S) for every duration histogram, finer ones for
# the two lag histograms.
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_HISTOGRAMS = (
    "http.server.request.duration",
    "http.client.request.duration",
    "rpc.server.call.duration",
    "db.client.operation.duration",
    "platform.pool.task.duration",
)
LAG_HISTOGRAMS = ("platform.eventloop.delay", "platform.thread.wakeup_delay")
# The urllib3 instrumentation also records body sizes; they are not in the contract, so they are dropped.
DROPPED_INSTRUMENTS = ("http.client.request.body.size", "http.client.response.body.size")

# Anchored on the host so that, say, an item key called "metrics" is still traced.
FLASK_EXCLUDED_URLS = r"//[^/]+/healthz(\?|$),//[^/]+/readyz(\?|$),//[^/]+/metrics(\?|$)"

PROMETHEUS_EXPORT_INTERVAL_S = 1.0

_log = logging.getLogger(__name__)


DEFAULT_SAMPLE_RATIO = 0.1


def default_sampler() -> Sampler | None:
    """1 trace in 10 that start here (OTEL_TRACES_SAMPLER_ARG changes the ratio), and every trace a caller
    already sampled (parent-based), so that distributed traces stay whole; None (the SDK reads them) when
    OTEL_TRACES_SAMPLER is set.

    Recording and exporting every span costs more CPU than a small request itself
    (bench/results/throughput.md). Metrics still count every request, and their exemplars point at the
    kept traces. OTEL_TRACES_SAMPLER=parentbased_always_on keeps them all.
    """
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(TraceIdRatioBased(sample_ratio()))


_RATIO_SAMPLERS = {"", "traceidratio", "parentbased_traceidratio"}


def sample_ratio() -> float:
    """OTEL_TRACES_SAMPLER_ARG as a ratio in [0, 1]; the default ratio when it is unset."""
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return DEFAULT_SAMPLE_RATIO
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio from 0 to 1, got {raw!r}")
    return ratio


def environment_problems() -> list[str]:
    """What is wrong with the OTEL_* variables this service reads, checked before any process starts.

    The SDK would warn and carry on (a bad sampler ratio silently becomes 1.0) or fail in every worker.
    """
    problems: dict[str, None] = {}  # ordered, without the generic variable's message three times
    for signal in ("traces", "metrics", "logs"):
        try:
            exp.otlp_protocol(signal)
        except ValueError as exc:
            problems[str(exc)] = None
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() in _RATIO_SAMPLERS:
        try:
            sample_ratio()
        except ValueError as exc:
            problems[str(exc)] = None
    return list(problems)


def otlp_metric_interval_s() -> float:
    """OTEL_METRIC_EXPORT_INTERVAL (ms, SDK default 60000) in seconds; a bad value keeps the default."""
    try:
        value = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000
    except ValueError:
        return 60.0
    return value if value > 0 else 60.0


def apply_env_defaults() -> None:
    """Defaults the instrumentations read once, at their first use: call before any of them loads."""
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")


def build_resource(settings: Settings, service_name: str = DEFAULT_SERVICE_NAME) -> Resource:
    """Ours over the SDK's detectors, then OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME over ours."""
    ours = {
        SERVICE_NAME: service_name,
        SERVICE_NAMESPACE: SERVICE_NAMESPACE_VALUE,
        SERVICE_VERSION: settings.service_version,
        DEPLOYMENT_ENVIRONMENT: settings.app_env,
    }
    resource = Resource.create(ours).merge(OTELResourceDetector().detect())
    if not resource.attributes.get(SERVICE_INSTANCE_ID):  # only if a future SDK stops providing it
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
    return resource


def metric_views() -> list[View]:
    views = [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS_S))
        for name in DURATION_HISTOGRAMS
    ]
    views += [
        View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(LAG_BUCKETS_S))
        for name in LAG_HISTOGRAMS
    ]
    views += [View(instrument_name=name, aggregation=DropAggregation()) for name in DROPPED_INSTRUMENTS]
    # The system-metrics instrumentation still adds a deprecated `generation` copy of this attribute.
    views.append(View(instrument_name="cpython.gc.collections", attribute_keys={"cpython.gc.generation"}))
    return views


@dataclass
class Telemetry:
    """The providers of one process and a bounded way to flush and stop them."""

    resource: Resource
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider | None
    prometheus_reader: PeriodicExportingMetricReader | None
    reporter: exp.FailureReporter
    request_durations: RequestDurations | None = None  # what instrument_flask_app records into, if set
    _exporters: list[Any] = field(default_factory=list)  # the OTLP wrappers, aborted at the deadline
    _log_handler: logging.Handler | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False

    @property
    def instance_id(self) -> str:
        return str(self.resource.attributes[SERVICE_INSTANCE_ID])

    @property
    def service_name(self) -> str:
        return str(self.resource.attributes[SERVICE_NAME])

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        millis = int(timeout_s * 1000)
        ok = self.tracer_provider.force_flush(millis)
        ok = self.meter_provider.force_flush(millis) and ok
        if self.logger_provider is not None:
            ok = self.logger_provider.force_flush(millis) and ok
        return ok

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and stop all providers, returning within `timeout_s`; True if everything finished.

        The three providers stop in parallel. Shortly before the deadline the OTLP exporters are aborted
        (retries end, the channel closes), so a dead collector cannot hold a worker past gunicorn's
        graceful timeout; whatever is still queued then is lost, which the failure counter cannot report
        any more.
        """
        with self._lock:
            if self._stopped:
                return True
            self._stopped = True
        deadline = time.monotonic() + max(0.0, timeout_s)
        if self._log_handler is not None:
            detach_handler(self._log_handler)
        abort_timer = threading.Timer(max(0.0, timeout_s * 0.8), self._abort_exports)
        abort_timer.daemon = True
        abort_timer.start()
        millis = max(0.0, timeout_s * 800)
        jobs: list[Callable[[], object]] = [
            lambda: self.meter_provider.shutdown(timeout_millis=millis),
            self.tracer_provider.shutdown,
        ]
        if self.logger_provider is not None:
            jobs.append(self.logger_provider.shutdown)
        threads = [
            threading.Thread(target=_quietly(job), name="telemetry-shutdown", daemon=True) for job in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        abort_timer.cancel()
        return not any(thread.is_alive() for thread in threads)

    def _abort_exports(self) -> None:
        for exporter in self._exporters:
            exporter.abort()


def _quietly(job: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            _log.warning("telemetry provider shutdown failed", exc_info=True)

    return run


def init_telemetry(
    settings: Settings,
    *,
    service_name: str = DEFAULT_SERVICE_NAME,
    span_exporter: SpanExporter | None = None,
    metric_readers: Sequence[MetricReader] = (),
    log_exporter: LogRecordExporter | None = None,
    prometheus_multiproc_dir: str | None = None,
    prometheus_export_interval_s: float = PROMETHEUS_EXPORT_INTERVAL_S,
    set_global: bool = True,
    instrument_libraries: bool | None = None,
    failure_log_interval_s: float = exp.FAILURE_LOG_INTERVAL_S,
) -> Telemetry:
    """Build this process's providers; call once per process, after fork.

    `set_global` installs them as the OpenTelemetry globals (raises if another provider already is);
    `instrument_libraries` (default: `set_global`) instruments urllib3, redis and the process metrics,
    which patch process-wide state.
    """
    apply_env_defaults()
    if instrument_libraries is None:
        instrument_libraries = set_global
    resource = build_resource(settings, service_name)
    reporter = exp.FailureReporter(interval_s=failure_log_interval_s)
    wrappers: list[Any] = []

    # Metrics first: the other providers' processors and the failure counter need the meter provider.
    readers: list[MetricReader] = list(metric_readers)
    otlp_metrics: MetricExporter | None = None
    protocol = exp.otlp_protocol("metrics")
    if protocol is not None:
        otlp_metrics = exp.ReportingMetricExporter(exp.otlp_metric_exporter(protocol), reporter)
        wrappers.append(otlp_metrics)
    # The request-duration histogram is aggregated in-process (app.telemetry.request_duration) when every
    # reader is ours and exports cumulative histograms; readers passed in (tests) see the SDK histogram.
    durations = None
    if not metric_readers and (otlp_metrics is None or can_share_collection(otlp_metrics)):
        durations = RequestDurations(InstrumentationScope(REQUEST_DURATION_SCOPE), DURATION_BUCKETS_S)

    def with_durations(exporter: MetricExporter) -> MetricExporter:
        return exporter if durations is None else MergingMetricExporter(exporter, [durations], resource)

    prom_dir = prometheus_multiproc_dir or os.environ.get(MULTIPROC_ENV) or None
    prometheus_reader = None
    if prom_dir:
        os.makedirs(prom_dir, exist_ok=True)
        configure_default_dir(prom_dir)
        local: MetricExporter = PrometheusMultiprocessExporter(prom_dir)
        if otlp_metrics is not None and can_share_collection(otlp_metrics):
            # One collection for both paths: each measurement aggregated once (app.telemetry.metrics_fanout).
            local = FanOutMetricExporter(local, otlp_metrics, otlp_metric_interval_s())
            otlp_metrics = None
        prometheus_reader = PeriodicExportingMetricReader(
            with_durations(local), export_interval_millis=prometheus_export_interval_s * 1000
        )
        readers.append(prometheus_reader)
    if otlp_metrics is not None:
        readers.append(PeriodicExportingMetricReader(with_durations(otlp_metrics)))
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, views=metric_views(), shutdown_on_exit=False
    )
    _register_own_instruments(meter_provider, settings, reporter)

    tracer_provider = TracerProvider(
        resource=resource, sampler=default_sampler(), shutdown_on_exit=False, meter_provider=meter_provider
    )
    protocol = exp.otlp_protocol("traces")
    if protocol is not None:
        otlp_spans = exp.ReportingSpanExporter(exp.otlp_span_exporter(protocol), reporter)
        wrappers.append(otlp_spans)
        tracer_provider.add_span_processor(BatchSpanProcessor(otlp_spans, meter_provider=meter_provider))
    if span_exporter is not None:
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(exp.ReportingSpanExporter(span_exporter, reporter))
        )

    logger_provider = None
    log_handler = None
    protocol = exp.otlp_protocol("logs")
    if protocol is not None or log_exporter is not None:
        logger_provider = LoggerProvider(
            resource=resource, shutdown_on_exit=False, meter_provider=meter_provider
        )
        if protocol is not None:
            otlp_logs = exp.ReportingLogExporter(exp.otlp_log_exporter(protocol), reporter)
            wrappers.append(otlp_logs)
            logger_provider.add_log_record_processor(
                BatchLogRecordProcessor(otlp_logs, meter_provider=meter_provider)
            )
        if log_exporter is not None:
            logger_provider.add_log_record_processor(
                SimpleLogRecordProcessor(exp.ReportingLogExporter(log_exporter, reporter))
            )
        log_handler = attach_otlp_handler(logger_provider, access_lines=settings.otlp_access_logs)
    exp.quiet_sdk_loggers(failure_log_interval_s)

    telemetry = Telemetry(
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        prometheus_reader=prometheus_reader,
        reporter=reporter,
        request_durations=durations,
        _exporters=wrappers,
        _log_handler=log_handler,
    )
    if set_global:
        _set_globals(telemetry)
        atexit.register(telemetry.shutdown, 5.0)
    if instrument_libraries:
        _instrument_libraries(tracer_provider, meter_provider)
    return telemetry


_global_request_durations: RequestDurations | None = None


def _set_globals(telemetry: Telemetry) -> None:
    global _global_request_durations
    _global_request_durations = telemetry.request_durations
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    if telemetry.logger_provider is not None:
        _logs.set_logger_provider(telemetry.logger_provider)
    # The API ignores a second provider with only a warning; a split setup must fail loudly instead.
    if trace.get_tracer_provider() is not telemetry.tracer_provider or (
        metrics.get_meter_provider() is not telemetry.meter_provider
    ):
        telemetry.shutdown(1.0)
        raise RuntimeError(
            "OpenTelemetry providers were already set in this process: init_telemetry runs once per worker, "
            "after fork (never in the gunicorn master); tests pass set_global=False"
        )


def _register_own_instruments(
    meter_provider: MeterProvider, settings: Settings, reporter: exp.FailureReporter
) -> None:
    meter = meter_provider.get_meter("app.telemetry")
    failures = meter.create_counter(
        "platform.telemetry.export.failures",
        unit="{batch}",
        description="Telemetry batches that could not be exported (lost), by signal",
    )
    for signal in ("traces", "metrics", "logs"):
        failures.add(0, {"signal": signal})  # the series exist from the start: alerts see 0, not absence
    reporter.bind_counter(failures)

    def one_worker(_options: CallbackOptions) -> Iterable[Observation]:
        return (Observation(1),)

    build_attributes = {"version": settings.service_version, "commit": settings.git_commit}

    def build_info(_options: CallbackOptions) -> Iterable[Observation]:
        return (Observation(1, build_attributes),)

    meter.create_observable_gauge(
        "platform.workers", callbacks=[one_worker], unit="{worker}", description="Live worker processes"
    )
    meter.create_observable_gauge(
        "platform.build.info", callbacks=[build_info], description="Build version and commit (always 1)"
    )


def _instrument_libraries(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    from app.telemetry.system_metrics import ProcessMetricsInstrumentor

    URLLib3Instrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    RedisInstrumentor().instrument(tracer_provider=tracer_provider)
    ProcessMetricsInstrumentor().instrument(meter_provider=meter_provider)


def instrument_flask_app(
    app: Flask,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    contrib: bool = False,
) -> Flask:
    """Trace one Flask app and record its HTTP RED metrics; /healthz, /readyz, /metrics are excluded.

    Default: app.telemetry.flask_instrumentation, which emits what opentelemetry-instrumentation-flask emits
    (stable HTTP semconv) at a fraction of its per-request cost. `contrib=True` uses FlaskInstrumentor itself
    (excluding the same paths, OTEL_PYTHON_FLASK_EXCLUDED_URLS still wins), for comparison and as a fallback.
    Providers default to the globals. Call after the app's own request hooks are registered: the hooks
    added here then run first on the way out, while the app's request context is still bound, and keep it
    (with the span) in the WSGI environ for the access log.
    """
    apply_env_defaults()
    if not contrib:
        from app.telemetry.flask_instrumentation import FlaskInstrumentation

        durations = _global_request_durations if meter_provider is None else None
        FlaskInstrumentation(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider, durations=durations
        )
        return app

    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS") or FLASK_EXCLUDED_URLS
    instrument_app: Callable[..., None] = FlaskInstrumentor().instrument_app
    instrument_app(
        app,
        excluded_urls=excluded,
        enable_commenter=False,  # no SQL here; saves a context attach per request
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )

    def stash_for_access_log(response: flask.Response) -> flask.Response:
        stash_request_log_context(flask.request.environ)
        return response

    app.after_request(stash_for_access_log)
    return app


__all__ = [
    "DURATION_BUCKETS_S",
    "LAG_BUCKETS_S",
    "Telemetry",
    "apply_env_defaults",
    "build_resource",
    "init_telemetry",
    "instrument_flask_app",
]
