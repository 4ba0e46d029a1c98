"""`http.server.request.duration`, aggregated where it is recorded: one bucket increment per request.

Why not the SDK's `Histogram.record`: under gunicorn it cost ~30 us of worker CPU per request on the
reference machine (bench: `shipped-without-histogram`), most of it cleaning and hashing the same five
attributes on every call (3.5 us plus ~1 us per attribute even single-threaded). A server's attribute sets
are few and the Flask instrumentation already knows each one's key, so here a request costs a dict lookup,
a bisect and a few additions under a lock.

The output is the SDK's own data model: a `Metric` holding a cumulative explicit-bucket `Histogram`
(`DURATION_BUCKETS_S`), min/max, and exemplars as the SDK's aligned-bucket reservoir keeps them (the latest
measurement per bucket since the previous collection, filtered by OTEL_METRICS_EXEMPLAR_FILTER, trace-based by
default). `MergingMetricExporter` adds it to every collection that app.telemetry.setup exports, so OTLP and
/metrics carry it like any instrument. setup only chooses this path when every exporter takes cumulative
histograms; otherwise, and for providers passed in by callers, the SDK histogram records.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

SCOPE = "app.telemetry.flask"  # the Flask instrumentation's meter and tracer
NAME = "http.server.request.duration"
UNIT = "s"
DESCRIPTION = "Duration of HTTP server requests."
# Seconds; also the SDK view's buckets for the other latency histograms (app.telemetry.setup).
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
MAX_SERIES = 2000  # the SDK's default cardinality limit; further attribute sets share one overflow series
_OVERFLOW = {"otel.metric.overflow": True}
_OVERFLOW_KEY = ("otel.metric.overflow",)


class _Series:
    __slots__ = ("attributes", "count", "counts", "exemplars", "max", "min", "sum")

    def __init__(self, attributes: Mapping[str, Any], buckets: int) -> None:
        self.attributes = attributes  # the same object on every collection (/metrics caches by identity)
        self.counts = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.exemplars: dict[int, Exemplar] = {}


class RequestDurations:
    """One process's request-duration histogram; `record` is called once per request."""

    def __init__(
        self, scope: InstrumentationScope, bounds: Sequence[float], *, exemplar_filter: str | None = None
    ) -> None:
        self.scope = scope
        self._bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._series: dict[Any, _Series] = {}
        self._start_ns = time_ns()
        chosen = exemplar_filter or os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based")
        chosen = chosen.strip().lower()
        self._exemplars = chosen if chosen in ("always_on", "always_off") else "trace_based"

    def record(
        self,
        seconds: float,
        key: Any,
        attributes: Callable[[], Mapping[str, Any]],
        span_context: SpanContext | None,
    ) -> None:
        """Count one request; `attributes` builds the attribute set of `key` the first time it is seen."""
        index = bisect_left(self._bounds, seconds)
        exemplar = None
        if self._exemplars != "always_off" and (
            self._exemplars == "always_on" or (span_context is not None and span_context.trace_flags.sampled)
        ):
            valid = span_context is not None and span_context.is_valid
            exemplar = Exemplar(
                {},
                seconds,
                time_ns(),
                span_context.span_id if valid else None,  # type: ignore[union-attr]
                span_context.trace_id if valid else None,  # type: ignore[union-attr]
            )
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._new_series(key, attributes)
            series.counts[index] += 1
            series.count += 1
            series.sum += seconds
            if seconds < series.min:
                series.min = seconds
            if seconds > series.max:
                series.max = seconds
            if exemplar is not None:
                series.exemplars[index] = exemplar

    def _new_series(self, key: Any, attributes: Callable[[], Mapping[str, Any]]) -> _Series:
        if len(self._series) >= MAX_SERIES:
            overflow = self._series.get(_OVERFLOW_KEY)
            if overflow is None:
                overflow = self._series[_OVERFLOW_KEY] = _Series(_OVERFLOW, len(self._bounds) + 1)
            return overflow
        series = self._series[key] = _Series(attributes(), len(self._bounds) + 1)
        return series

    def collect(self) -> Metric | None:
        """A cumulative snapshot (None before the first request); exemplars restart with each collection."""
        now = time_ns()
        points = []
        with self._lock:
            for series in self._series.values():
                exemplars = [series.exemplars[i] for i in sorted(series.exemplars)]
                series.exemplars = {}
                points.append(
                    HistogramDataPoint(
                        attributes=series.attributes,
                        start_time_unix_nano=self._start_ns,
                        time_unix_nano=now,
                        count=series.count,
                        sum=series.sum,
                        bucket_counts=tuple(series.counts),
                        explicit_bounds=self._bounds,
                        min=series.min,
                        max=series.max,
                        exemplars=exemplars,
                    )
                )
        if not points:
            return None
        return Metric(
            name=NAME,
            description=DESCRIPTION,
            unit=UNIT,
            data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )


class MergingMetricExporter(MetricExporter):
    """Adds the metrics of `sources` to every collection before `inner` exports it."""

    def __init__(
        self, inner: MetricExporter, sources: Sequence[RequestDurations], resource: Resource
    ) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality)
        self._inner = inner
        self._sources = tuple(sources)
        self._resource = resource

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self._inner.export(self.merge(metrics_data), timeout_millis=timeout_millis)

    def merge(self, metrics_data: MetricsData) -> MetricsData:
        extra = [(s.scope, metric) for s in self._sources if (metric := s.collect()) is not None]
        if not extra:
            return metrics_data
        resource_metrics = list(metrics_data.resource_metrics) or [
            ResourceMetrics(resource=self._resource, scope_metrics=[], schema_url="")
        ]
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for scope, metric in extra:
            for i, scope_metrics in enumerate(scopes):
                if scope_metrics.scope.name == scope.name:
                    scopes[i] = ScopeMetrics(
                        scope=scope_metrics.scope,
                        metrics=[*scope_metrics.metrics, metric],
                        schema_url=scope_metrics.schema_url,
                    )
                    break
            else:
                scopes.append(ScopeMetrics(scope=scope, metrics=[metric], schema_url=scope.schema_url or ""))
        resource_metrics[0] = ResourceMetrics(
            resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url
        )
        return MetricsData(resource_metrics=resource_metrics)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis)


__all__ = ["MergingMetricExporter", "RequestDurations"]
