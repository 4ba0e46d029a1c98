"""One metric collection feeding both destinations: the /metrics files every second, OTLP every interval.

With two metric readers the SDK aggregates every measurement twice (each reader keeps its own storage),
which made `Histogram.record` the most expensive telemetry step of a request. Both destinations want
cumulative data, so one reader suffices: it collects at the /metrics cadence, writes the multiprocess
files each time, and hands every Nth snapshot to the OTLP exporter.

The OTLP export runs on its own thread so that a slow or unreachable collector never delays /metrics.
Its hand-off slot holds one snapshot: a newer one replaces one not yet sent, which loses nothing
because cumulative snapshots contain all earlier ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation


def can_share_collection(remote: MetricExporter) -> bool:
    """True when `remote` wants what the /metrics files get: cumulative, explicit-bucket histograms."""
    temporality: dict[type, AggregationTemporality] = remote._preferred_temporality or {}
    aggregation: dict[type, Any] = remote._preferred_aggregation or {}
    return all(t is AggregationTemporality.CUMULATIVE for t in temporality.values()) and all(
        isinstance(a, ExplicitBucketHistogramAggregation) for a in aggregation.values()
    )


class FanOutMetricExporter(MetricExporter):
    def __init__(
        self,
        local: MetricExporter,
        remote: MetricExporter,
        remote_interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(preferred_temporality=local._preferred_temporality)
        self._local = local
        self._remote = remote
        self._interval_s = remote_interval_s
        self._clock = clock
        self._next_remote = clock() + remote_interval_s
        self._cond = threading.Condition()
        self._slot: MetricsData | None = None
        self._latest: MetricsData | None = None
        self._sending = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = self._local.export(metrics_data, timeout_millis=timeout_millis)
        now = self._clock()
        with self._cond:
            self._latest = metrics_data
            if now >= self._next_remote:
                self._next_remote = now + self._interval_s
                self._slot = metrics_data
                self._ensure_thread()
                self._cond.notify()
        return result

    def _ensure_thread(self) -> None:
        # Started on first use, in the process that exports (after fork), never in a parent.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._send_loop, name="otlp-metrics-export", daemon=True)
            self._thread.start()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closed:
                    self._cond.wait()
                if self._slot is None:
                    return
                data, self._slot, self._sending = self._slot, None, True
            try:
                self._remote.export(data)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Send the newest snapshot now and wait (bounded) until it left."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            if self._latest is not None:
                self._slot = self._latest
                self._ensure_thread()
                self._cond.notify_all()
            while (self._slot is not None or self._sending) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            sent = self._slot is None and not self._sending
        return self._local.force_flush(timeout_millis) and sent

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.force_flush(timeout_millis / 2)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_millis / 2000)
        self._local.shutdown(timeout_millis=timeout_millis / 2)
        self._remote.shutdown(timeout_millis=timeout_millis / 2)
