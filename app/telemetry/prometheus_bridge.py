"""`GET /metrics` fed by the OTel instruments: one API, two exporters.

Each worker runs a PeriodicExportingMetricReader with `PrometheusMultiprocessExporter`, which writes every
cumulative data point into prometheus_client's multiprocess mmap files (the same files, keys and layout
that prometheus_client's own multiprocess metrics write), so `MultiProcessCollector` sums them over all
workers at scrape time:

- monotonic sums -> `counter_<pid>.db`, sample `<name>_total` (a dead worker's totals stay counted);
- histograms -> `histogram_<pid>.db`, one non-cumulative count per bucket with an `le` label plus `_sum`,
  exactly like prometheus_client's Histogram; the collector accumulates buckets and derives `_count`;
- gauges and non-monotonic sums -> `gauge_livesum_<pid>.db` or `gauge_livemax_<pid>.db` (docs/telemetry.md
  marks each gauge live sum or live max); `mark_worker_dead` deletes a dead worker's live files.

Names follow Prometheus's OTLP translation (app.telemetry.prometheus_names), so both paths agree.
Per export, the translated keys of each (metric, attribute set) are cached: the SDK hands the same
attributes object for a series on every collection, so a lookup by its identity is all the steady state
costs, and only values that changed are written.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics import _Gauge as SyncGauge
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, mmap_dict, multiprocess
from prometheus_client.utils import floatToGoString

from app.telemetry.prometheus_names import MetricKind, labels, metric_name

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# docs/telemetry.md: these gauges aggregate over workers by max; every other gauge and up-down counter
# by sum. Both are "live": a dead worker's share disappears with `mark_worker_dead`.
LIVE_MAX_GAUGES = frozenset({"platform.circuit_breaker.state", "platform.build.info"})

# A series cache bigger than this is dropped and rebuilt: bounded memory even under a cardinality leak.
MAX_CACHED_SERIES_PER_METRIC = 5000

_log = logging.getLogger(__name__)


class _ValueFile(Protocol):
    """The part of prometheus_client.mmap_dict.MmapedDict used here (the library is untyped)."""

    def read_value(self, key: str) -> tuple[float, float]: ...
    def write_value(self, key: str, value: float, timestamp: float) -> None: ...
    def close(self) -> None: ...


# Typed handles on prometheus_client's untyped multiprocess internals.
_open_value_file: Callable[[str], _ValueFile] = mmap_dict.MmapedDict
_mmap_key: Callable[[str, str, list[str], list[str], str], str] = mmap_dict.mmap_key
_go_float: Callable[[float], str] = floatToGoString
_mark_process_dead: Callable[[int, str], None] = multiprocess.mark_process_dead
_collector: Callable[..., object] = multiprocess.MultiProcessCollector
_CUMULATIVE: dict[type, AggregationTemporality] = {
    cls: AggregationTemporality.CUMULATIVE
    for cls in (
        Counter,
        UpDownCounter,
        Histogram,
        SyncGauge,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}
_configured_dir: str | None = None


def configure_default_dir(path: str | None) -> None:
    """The directory `render_metrics()` reads when called without one (set by init_telemetry)."""
    global _configured_dir
    _configured_dir = path


def _resolve_dir(path: str | None) -> str:
    resolved = path or _configured_dir or os.environ.get(MULTIPROC_ENV)
    if not resolved:
        raise RuntimeError(f"no Prometheus multiprocess directory: set {MULTIPROC_ENV}")
    return resolved


def prepare_multiproc_dir(path: str) -> str:
    """Create or empty the directory at master start and export it to the workers' environment.

    Files left by a previous run would otherwise be summed into this run's counters.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    return path


def mark_worker_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead worker's live gauges (gunicorn child_exit); its counters and histograms stay."""
    _mark_process_dead(pid, _resolve_dir(path))


def render_metrics(path: str | None = None) -> tuple[bytes, str]:
    """Prometheus text aggregated over all workers' files: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    _collector(registry, path=_resolve_dir(path))
    return generate_latest(registry), CONTENT_TYPE_LATEST


_INITIAL_FILE_SIZE = 1 << 16  # what MmapedDict allocates for a new file
_EMPTY_HEADER = struct.pack("i", 8)  # "used" = 8: the header only, no entries yet


def _create_atomically(path: str) -> None:
    """Give a new file its header before its name appears.

    MmapedDict creates an empty file and sizes it afterwards; a scrape globbing the directory in between
    reads zero bytes and fails (seen when a replacement worker starts during a scrape). A file complete
    under a temporary name (not *.db, so never globbed) and then renamed cannot be seen half-made.
    """
    if os.path.exists(path):
        return
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "wb") as fh:
        fh.truncate(_INITIAL_FILE_SIZE)
        fh.write(_EMPTY_HEADER)
    os.replace(temporary, path)


@dataclass(slots=True)
class _Series:
    attributes: object  # kept so that its id() cannot be reused while cached
    keys: tuple[str, ...]  # gauges/counters: one key; histograms: one per bucket, then _sum
    last: list[float]
    generation: int = 0


@dataclass(slots=True)
class _MetricWriter:
    """Translated identity of one OTel metric and its series cache."""

    kind: MetricKind
    name: str  # the prometheus_client metric name (counters without `_total`)
    sample: str  # the sample name for counters and gauges
    help_text: str
    file: _ValueFile
    live: bool  # unseen series are zeroed (gauges: an unobserved value is gone)
    series: dict[int, _Series] = field(default_factory=dict)

    def key_for(self, attributes: Mapping[str, object], bounds: Sequence[float]) -> tuple[str, ...]:
        label_map = labels(attributes)
        names, values = list(label_map), list(label_map.values())
        if self.kind is not MetricKind.HISTOGRAM:
            return (_mmap_key(self.name, self.sample, names, values, self.help_text),)
        le_values = [*(_go_float(b) for b in bounds), "+Inf"]
        bucket_keys = [
            _mmap_key(self.name, self.name + "_bucket", [*names, "le"], [*values, le], self.help_text)
            for le in le_values
        ]
        return (*bucket_keys, _mmap_key(self.name, self.name + "_sum", names, values, self.help_text))


class PrometheusMultiprocessExporter(MetricExporter):
    """Writes cumulative OTel data points into prometheus_client multiprocess files in `directory`."""

    def __init__(self, directory: str) -> None:
        super().__init__(preferred_temporality=dict(_CUMULATIVE))
        self._directory = directory
        self._pid = os.getpid()
        self._files: dict[str, _ValueFile] = {}
        self._writers: dict[str, _MetricWriter | None] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- MetricExporter ------------------------------------------------------------------------------
    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        # A process forked from this worker (a fork-based pool) inherits the reader thread; its values must
        # not land in the worker's files, and it is not a worker that child_exit would ever mark dead.
        if self._closed or os.getpid() != self._pid:
            return MetricExportResult.SUCCESS
        with self._lock:
            self._generation += 1
            for resource_metrics in metrics_data.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self._export_metric(metric)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with self._lock:
            self._closed = True
            for mmaped in self._files.values():
                mmaped.close()
            self._files.clear()
            self._writers.clear()

    # -- internals -----------------------------------------------------------------------------------
    def _export_metric(self, metric: Metric) -> None:
        if metric.name in self._writers:
            writer = self._writers[metric.name]
        else:
            writer = self._writers[metric.name] = self._new_writer(metric)
        if writer is None:
            return
        data = metric.data
        if writer.kind is MetricKind.HISTOGRAM:
            self._write_histogram(writer, data.data_points)  # type: ignore[arg-type]
        else:
            self._write_numbers(writer, data.data_points)  # type: ignore[arg-type]

    def _file(self, prefix: str) -> _ValueFile:
        mmaped = self._files.get(prefix)
        if mmaped is None:
            path = os.path.join(self._directory, f"{prefix}_{self._pid}.db")
            _create_atomically(path)
            mmaped = self._files[prefix] = _open_value_file(path)
        return mmaped

    def _new_writer(self, metric: Metric) -> _MetricWriter | None:
        data = metric.data
        if isinstance(data, Sum):
            kind = MetricKind.MONOTONIC_COUNTER if data.is_monotonic else MetricKind.NON_MONOTONIC_COUNTER
        elif isinstance(data, Gauge):
            kind = MetricKind.GAUGE
        elif isinstance(data, HistogramData):
            kind = MetricKind.HISTOGRAM
        else:  # exponential histograms have no prometheus_client multiprocess form
            _log.warning("metric %s: %s is not exported to /metrics", metric.name, type(data).__name__)
            return None
        name = metric_name(metric.name, metric.unit or "", kind)
        if name is None:
            _log.warning("metric %s has no valid Prometheus name; not exported to /metrics", metric.name)
            return None
        help_text = metric.description or metric.name
        if kind is MetricKind.MONOTONIC_COUNTER:
            base = name.removesuffix("_total")
            return _MetricWriter(kind, base, name, help_text, self._file("counter"), live=False)
        if kind is MetricKind.HISTOGRAM:
            return _MetricWriter(kind, name, name, help_text, self._file("histogram"), live=False)
        mode = "livemax" if metric.name in LIVE_MAX_GAUGES else "livesum"
        return _MetricWriter(kind, name, name, help_text, self._file(f"gauge_{mode}"), live=True)

    def _series(self, writer: _MetricWriter, attributes: object, bounds: Sequence[float]) -> _Series:
        cached = writer.series.get(id(attributes))
        if cached is not None and cached.attributes is attributes:
            return cached
        if len(writer.series) >= MAX_CACHED_SERIES_PER_METRIC:
            writer.series.clear()
        keys = writer.key_for(attributes or {}, bounds)  # type: ignore[arg-type]
        # Start from what the file holds (a restarted exporter in the same process must not go backwards).
        last = [writer.file.read_value(k)[0] for k in keys]
        series = writer.series[id(attributes)] = _Series(attributes, keys, last)
        return series

    def _write_numbers(self, writer: _MetricWriter, points: Iterable[NumberDataPoint]) -> None:
        generation = self._generation
        write = writer.file.write_value
        for point in points:
            series = self._series(writer, point.attributes, ())
            series.generation = generation
            value = float(point.value)
            if value != series.last[0]:
                series.last[0] = value
                write(series.keys[0], value, 0.0)
        if writer.live:
            for series in writer.series.values():
                if series.generation != generation and series.last[0] != 0.0:
                    series.last[0] = 0.0
                    write(series.keys[0], 0.0, 0.0)

    def _write_histogram(self, writer: _MetricWriter, points: Iterable[HistogramDataPoint]) -> None:
        write = writer.file.write_value
        for point in points:
            series = self._series(writer, point.attributes, point.explicit_bounds)
            keys, last = series.keys, series.last
            counts = point.bucket_counts
            if len(counts) + 1 != len(keys):  # bucket layout changed (a new view): rebuild the keys
                writer.series.pop(id(point.attributes), None)
                series = self._series(writer, point.attributes, point.explicit_bounds)
                keys, last = series.keys, series.last
            for i, count in enumerate(counts):
                value = float(count)
                if value != last[i]:
                    last[i] = value
                    write(keys[i], value, 0.0)
            total = float(point.sum)
            if total != last[-1]:
                last[-1] = total
                write(keys[-1], total, 0.0)
