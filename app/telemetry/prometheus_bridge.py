"""`GET /metrics` for all workers: every worker's OTel metrics, summed by prometheus_client multiprocess.

The OpenTelemetry Prometheus exporter serves one process's metrics (opentelemetry-python #4711), and a
scrape of a preforked server reaches one worker at a time. So each worker's SDK also has this metric
reader (`OTEL_METRICS_EXPORTER=prometheus_multiprocess`, entry point of this package). Every second it
collects cumulative data and hands it to prometheus_client's documented multiprocess API
(PROMETHEUS_MULTIPROC_DIR, set before prometheus_client is first imported): one prometheus_client metric
per OTel metric and label set, written to the worker's files; `render_metrics` aggregates every worker's
files at scrape time with `MultiProcessCollector`, and the master's `child_exit` hook calls
`mark_worker_dead`.

- monotonic sums -> Counter (incremented by the growth since the last collection); a dead worker's totals
  stay counted, so a restart never looks like a counter reset;
- gauges and up-down counters -> Gauge, `livesum` unless GAUGE_MODES says otherwise (`liveall` keeps one
  series per worker, labelled `pid`; `livemax` for constants); a dead worker's values disappear;
- histograms -> Histogram with the same buckets. Its API takes single observations, so the new counts of
  each bucket are observed again at values inside that bucket, chosen so that their sum is the growth of
  the OTel sum: bucket counts, `_count` and `_sum` come out exact (the sum up to float rounding).

Names follow Prometheus's OTLP translation (app.telemetry.prometheus_names), so both paths agree.
"""

from __future__ import annotations

import glob
import math
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    Sum,
)

from app.telemetry.environment import MULTIPROC_ENV
from app.telemetry.prometheus_names import MetricKind, labels, metric_name

EXPORT_INTERVAL_S = 1.0
# docs/telemetry.md marks each gauge's aggregation over workers; every other gauge is a live sum.
GaugeMode = Literal["liveall", "livemax", "livesum"]
GAUGE_MODES: dict[str, GaugeMode] = {
    "platform.circuit_breaker.state": "liveall",
    "platform.build.info": "livemax",
    # Every jobs worker reads the same queue: one value, not one per worker.
    "platform.jobs.queue.depth": "livemax",
    "platform.jobs.oldest_age": "livemax",
}


def prepare_multiproc_dir(path: str) -> str:
    """Create or empty the directory at master start and export it to the workers' environment.

    prometheus_client's multiprocess mode needs an empty directory per run: files left by a previous run
    would be summed into this run's counters.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    return path


def _directory(path: str | None) -> str:
    found = path or os.environ.get(MULTIPROC_ENV)
    if not found:
        raise RuntimeError(f"no Prometheus multiprocess directory: set {MULTIPROC_ENV}")
    return found


def mark_worker_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead worker's live gauges (gunicorn's child_exit); its counters and histograms stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, _directory(path))  # type: ignore[no-untyped-call]


def render_metrics(path: str | None = None) -> tuple[bytes, str]:
    """Prometheus text aggregated over all workers' files (in `path`, default the variable's)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=_directory(path))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


class PrometheusMultiprocessMetricReader(PeriodicExportingMetricReader):
    """The metric reader behind `OTEL_METRICS_EXPORTER=prometheus_multiprocess`."""

    def __init__(self, export_interval_millis: float = EXPORT_INTERVAL_S * 1000) -> None:
        if not os.environ.get(MULTIPROC_ENV):
            raise RuntimeError(f"the prometheus_multiprocess metric exporter needs {MULTIPROC_ENV}")
        super().__init__(PrometheusMultiprocessExporter(), export_interval_millis=export_interval_millis)
        _readers.add(self)


# The readers of this process (the SDK's configurator creates them; there is one per worker).
_readers: weakref.WeakSet[PrometheusMultiprocessMetricReader] = weakref.WeakSet()


def write_now(timeout_s: float = 2.0) -> None:
    """Write this process's metrics to its /metrics files now, not at the next interval.

    A worker calls it once built, before it serves: its series, the known ones at 0, are then on /metrics
    from the first scrape on, instead of an empty page for up to a second. Only these files: OTLP export
    keeps its own schedule (a collector that is down must not delay a worker's start)."""
    for reader in list(_readers):
        reader.force_flush(timeout_millis=timeout_s * 1000)


class PrometheusMultiprocessExporter(MetricExporter):
    """Writes cumulative OTel data points through prometheus_client metrics in multiprocess mode."""

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()
        # Bounded by the SDK's cardinality limit (2,000 attribute sets per metric, then one overflow set).
        self._writers: dict[tuple[str, tuple[str, ...]], _Writer] = {}
        self._lock = threading.Lock()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        # A process forked from this worker inherits the reader thread; its values are not the worker's.
        if os.getpid() != self._pid:
            return MetricExportResult.SUCCESS
        with self._lock:
            for resource_metrics in metrics_data.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self._export(metric)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass

    def _export(self, metric: Metric) -> None:
        data = metric.data
        if isinstance(data, Sum):
            kind = MetricKind.MONOTONIC_COUNTER if data.is_monotonic else MetricKind.NON_MONOTONIC_COUNTER
        elif isinstance(data, Gauge):
            kind = MetricKind.GAUGE
        elif isinstance(data, Histogram):
            kind = MetricKind.HISTOGRAM
        else:  # exponential histograms have no prometheus_client form
            return
        name = metric_name(metric.name, metric.unit or "", kind)
        if name is None:
            return
        for point in data.data_points:
            label_map = labels(point.attributes or {})
            key = (name, tuple(label_map))
            writer = self._writers.get(key)
            if writer is None:
                writer = self._writers[key] = _Writer.create(kind, name, key[1], metric, point)
            writer.write(tuple(label_map.values()), point)
        if kind in (MetricKind.GAUGE, MetricKind.NON_MONOTONIC_COUNTER):
            # An observable gauge that stopped reporting a series: its value is gone, not frozen.
            for key, writer in self._writers.items():
                if key[0] == name:
                    writer.zero_unseen()


@dataclass
class _Writer:
    """One prometheus_client metric (an OTel metric with one set of label names) and what it last wrote."""

    kind: MetricKind
    metric: Any  # prometheus_client Counter, Gauge or Histogram
    bounds: tuple[float, ...] = ()
    last: dict[tuple[str, ...], Any] = field(default_factory=dict)  # label values -> last cumulative state
    written: set[tuple[str, ...]] = field(default_factory=set)  # label values written by this collection

    @classmethod
    def create(
        cls, kind: MetricKind, name: str, label_names: tuple[str, ...], metric: Metric, point: Any
    ) -> _Writer:
        from prometheus_client import Counter, Gauge, Histogram

        doc = metric.description or metric.name
        if kind is MetricKind.MONOTONIC_COUNTER:
            return cls(kind, Counter(name.removesuffix("_total"), doc, label_names, registry=None))
        if kind is MetricKind.HISTOGRAM:
            bounds = tuple(point.explicit_bounds)
            return cls(
                kind, Histogram(name, doc, label_names, buckets=(*bounds, math.inf), registry=None), bounds
            )
        mode: GaugeMode = GAUGE_MODES.get(metric.name, "livesum")
        return cls(kind, Gauge(name, doc, label_names, registry=None, multiprocess_mode=mode))

    def write(self, values: tuple[str, ...], point: NumberDataPoint | HistogramDataPoint) -> None:
        child = self.metric.labels(*values) if values else self.metric
        if isinstance(point, HistogramDataPoint):
            self._write_histogram(child, values, point)
        elif self.kind is MetricKind.MONOTONIC_COUNTER:
            last = self.last.get(values, 0.0)
            if point.value > last:
                child.inc(point.value - last)
                self.last[values] = point.value
        else:
            child.set(point.value)
            self.last[values] = point.value
            self.written.add(values)

    def zero_unseen(self) -> None:
        """Gauges: set every series this collection did not report to 0."""
        for values in self.last.keys() - self.written:
            (self.metric.labels(*values) if values else self.metric).set(0)
            self.last[values] = 0.0
        self.written.clear()

    def _write_histogram(self, child: Any, values: tuple[str, ...], point: HistogramDataPoint) -> None:
        counts, total = self.last.get(values, ((0,) * len(point.bucket_counts), 0.0))
        growth = [new - old for new, old in zip(point.bucket_counts, counts, strict=True)]
        if any(growth):
            for value, times in replay(self.bounds, growth, point.sum - total, point.min, point.max):
                for _ in range(times):
                    child.observe(value)
        self.last[values] = (tuple(point.bucket_counts), point.sum)


def replay(
    bounds: Sequence[float], growth: Sequence[int], growth_sum: float, low: float, high: float
) -> Iterable[tuple[float, int]]:
    """(value, times) per bucket that grew: values inside the bucket, all placed at the same relative
    position between its bounds, chosen so that the observations add up to `growth_sum`.

    Bucket i holds values in (bounds[i-1], bounds[i]] (the first from `low`, the last up to `high`, the
    smallest and largest values ever recorded), so such a position exists: the real values lie there.
    """
    edges = [min(low, bounds[0]), *bounds, max(high, bounds[-1])]
    grown = [(i, n) for i, n in enumerate(growth) if n > 0]
    lowest = sum(n * edges[i] for i, n in grown)
    highest = sum(n * edges[i + 1] for i, n in grown)
    position = 1.0 if highest <= lowest else min(1.0, max(0.0, (growth_sum - lowest) / (highest - lowest)))
    for i, n in grown:
        value = edges[i] + position * (edges[i + 1] - edges[i])
        if i > 0:  # a value on a lower bound belongs to the bucket below
            value = max(value, math.nextafter(edges[i], math.inf))
        yield value, n
