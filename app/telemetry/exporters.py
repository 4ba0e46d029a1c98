"""OTLP exporters from the standard OTEL_* variables, wrapped so that a failing backend costs little.

A down collector must never show up per request: the batch processors already keep exports off the request
path and drop from a bounded queue; here each failed batch is counted in
`platform.telemetry.export.failures{signal}` and reported in one log line per signal per interval. The
exporters' own log records (one or more per failed batch, with retries) are captured and dropped; the last
one becomes the detail of that rate-limited line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from opentelemetry.metrics import Counter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

Signal = Literal["traces", "metrics", "logs"]

FAILURE_LOG_INTERVAL_S = 60.0
REPORT_LOGGER = "app.telemetry.export"

# Loggers whose records say the same thing as our counter, once per failed batch or dropped item.
_EXPORTER_LOGGER_PREFIX = "opentelemetry.exporter.otlp"
_SDK_NOISY_LOGGERS = (
    "opentelemetry.sdk._shared_internal",  # "Queue full, dropping Span." on every emit while full
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._logs._internal.export",
)

_ENDPOINT_VARS = {
    "traces": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "logs": "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
}
_PROTOCOL_VARS = {
    "traces": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "logs": "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
}
_SELECTOR_VARS = {
    "traces": "OTEL_TRACES_EXPORTER",
    "metrics": "OTEL_METRICS_EXPORTER",
    "logs": "OTEL_LOGS_EXPORTER",
}


def otlp_protocol(signal: Signal) -> str | None:
    """`grpc` or `http/protobuf` when OTLP is configured for this signal, else None.

    OTLP is on when a generic or signal-specific endpoint is set and OTEL_<SIGNAL>_EXPORTER is not `none`.
    """
    endpoint = os.environ.get(_ENDPOINT_VARS[signal]) or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    selector = os.environ.get(_SELECTOR_VARS[signal], "otlp").strip().lower()
    if selector == "none":
        return None
    protocol = (
        os.environ.get(_PROTOCOL_VARS[signal]) or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    protocol = protocol.strip().lower()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r} (grpc, http/protobuf)"
        )
    return protocol


def otlp_span_exporter(protocol: str) -> SpanExporter:
    from app.telemetry import otlp_exporters

    return otlp_exporters.GrpcSpanExporter() if protocol == "grpc" else otlp_exporters.HttpSpanExporter()


def otlp_metric_exporter(protocol: str) -> MetricExporter:
    # Once per export interval, not per request: the SDK's own exporter and encoder.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter()


def otlp_log_exporter(protocol: str) -> LogRecordExporter:
    from app.telemetry import otlp_exporters

    return otlp_exporters.GrpcLogExporter() if protocol == "grpc" else otlp_exporters.HttpLogExporter()


class _ExporterLogCapture(logging.Filter):
    """Drops the OTLP exporters' own records, keeping the last message per thread as failure detail.

    Each signal exports on its own thread, so a thread-local ties a message to the export that logged it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            try:
                self._local.detail = record.getMessage()[:300]
            except Exception:
                self._local.detail = str(record.msg)[:300]
        return False

    def take_detail(self) -> str:
        detail: str = getattr(self._local, "detail", "")
        self._local.detail = ""
        return detail


class _RateLimitFilter(logging.Filter):
    """Lets each distinct message template of a logger through at most once per interval."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                return False
            if len(self._last) > 256:  # bounded: templates are few, but stay safe
                self._last.clear()
            self._last[key] = now
        return True


_capture = _ExporterLogCapture()
_capture_lock = threading.Lock()


def quiet_sdk_loggers(interval_s: float = FAILURE_LOG_INTERVAL_S) -> None:
    """Attach the capture to every loaded OTLP exporter logger and rate-limit the SDK's per-item warnings.

    Logger filters apply only at the logger that creates a record, so each module logger gets its own.
    Call after the exporters are imported; repeated calls do not stack filters.
    """
    with _capture_lock:
        names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(_EXPORTER_LOGGER_PREFIX)]
        for name in names:
            logger = logging.getLogger(name)
            if _capture not in logger.filters:
                logger.addFilter(_capture)
        for name in _SDK_NOISY_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RateLimitFilter) for f in logger.filters):
                logger.addFilter(_RateLimitFilter(interval_s))


class FailureReporter:
    """Counts failed export batches per signal and logs at most once per interval per signal."""

    def __init__(
        self,
        *,
        interval_s: float = FAILURE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._log = logger or logging.getLogger(REPORT_LOGGER)
        self._counter: Counter | None = None
        self._attributes = {s: {"signal": s} for s in ("traces", "metrics", "logs")}
        self._last_logged: dict[str, float] = {}
        self._since_logged: dict[str, int] = {}
        self._lock = threading.Lock()

    def bind_counter(self, counter: Counter) -> None:
        """The counter comes from the meter provider, which is built after the exporters it wraps."""
        self._counter = counter

    def failed(self, signal: Signal, detail: str = "") -> None:
        if self._counter is not None:
            self._counter.add(1, self._attributes[signal])
        now = self._clock()
        with self._lock:
            count = self._since_logged.get(signal, 0) + 1
            last = self._last_logged.get(signal)
            if last is not None and now - last < self._interval_s:
                self._since_logged[signal] = count
                return
            self._last_logged[signal] = now
            self._since_logged[signal] = 0
        self._log.warning(
            "telemetry export failing: %d %s batch(es) lost since the last report (one report per %gs)%s",
            count,
            signal,
            self._interval_s,
            f"; last error: {detail}" if detail else "",
            extra={"signal": signal, "failed_batches": count},
        )


class _Guard:
    """Shared by the wrappers: failure bookkeeping and an abort switch for a bounded shutdown."""

    def __init__(self, signal: Signal, reporter: FailureReporter) -> None:
        self.signal: Signal = signal
        self.reporter = reporter
        self.aborted = False
        self.inner_shut = False
        self.lock = threading.Lock()

    def failed(self, exc: BaseException | None = None) -> None:
        detail = _capture.take_detail() or (repr(exc) if exc is not None else "")
        if not self.aborted:
            self.reporter.failed(self.signal, detail)

    def shutdown_once(self, shutdown: Callable[[], None]) -> None:
        with self.lock:
            if self.inner_shut:
                return
            self.inner_shut = True
        try:
            shutdown()
        except Exception:
            logging.getLogger(REPORT_LOGGER).debug("exporter shutdown failed", exc_info=True)


class ReportingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, reporter: FailureReporter) -> None:
        self.inner = inner
        self._guard = _Guard("traces", reporter)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._guard.aborted:
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self._guard.failed(exc)
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._guard.failed()
        return result

    def abort(self) -> None:
        """Stop exporting now: pending retries end, later batches are dropped (shutdown deadline)."""
        self._guard.aborted = True
        self._guard.shutdown_once(self.inner.shutdown)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._guard.shutdown_once(self.inner.shutdown)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class ReportingLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, reporter: FailureReporter) -> None:
        self.inner = inner
        self._guard = _Guard("logs", reporter)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self._guard.aborted:
            return LogRecordExportResult.FAILURE
        try:
            result = self.inner.export(batch)
        except Exception as exc:
            self._guard.failed(exc)
            return LogRecordExportResult.FAILURE
        # Compare by name: older exporters still return the deprecated LogExportResult enum.
        if getattr(result, "name", "") != "SUCCESS":
            self._guard.failed()
            return LogRecordExportResult.FAILURE
        return LogRecordExportResult.SUCCESS

    def abort(self) -> None:
        self._guard.aborted = True
        self._guard.shutdown_once(self.inner.shutdown)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._guard.shutdown_once(self.inner.shutdown)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class ReportingMetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, reporter: FailureReporter) -> None:
        # Temporality and aggregation preferences are the wrapped exporter's (OTEL_EXPORTER_OTLP_METRICS_*).
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._guard = _Guard("metrics", reporter)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._guard.aborted:
            return MetricExportResult.FAILURE
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._guard.failed(exc)
            return MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self._guard.failed()
        return result

    def abort(self) -> None:
        self._guard.aborted = True
        self._guard.shutdown_once(self.inner.shutdown)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._guard.shutdown_once(lambda: self.inner.shutdown(timeout_millis=timeout_millis))

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)
