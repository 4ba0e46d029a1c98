"""Cost of one /metrics bridge export (PrometheusMultiprocessExporter) and of one scrape, for ~500 series.

Measures the exporter alone on a collected MetricsData (the SDK's collect is reported separately), in the
steady state (every series cached, values unchanged), with every value changed, and cold (first export:
names translated, keys built, file entries created); then render_metrics() over 2 workers' files.

    .venv/bin/python -m bench.bench_bridge [--series 500] [--repeat 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from app.telemetry.prometheus_bridge import PrometheusMultiprocessExporter, render_metrics


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median microseconds per call."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def workload(series: int) -> tuple[InMemoryMetricReader, Callable[[int], None]]:
    """~series data points: counters, a histogram per route and status, gauges (the service's mix)."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("bench")
    requests = meter.create_counter("platform.cache.requests", unit="{request}")
    duration = meter.create_histogram(
        "http.server.request.duration",
        unit="s",
        explicit_bucket_boundaries_advisory=[
            0.005,
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            0.75,
            1,
            2.5,
            5,
        ],
    )
    size = meter.create_up_down_counter("platform.cache.size", unit="{entry}")
    per_kind = series // 3

    def record(step: int) -> None:
        for i in range(per_kind):
            requests.add(1, {"cache": f"c{i % 7}", "result": f"r{i}"})
            duration.record(
                0.01 * (step % 7 + 1), {"http.route": f"/r/{i % 50}", "http.response.status_code": 200 + i}
            )
            size.add(1, {"cache": f"c{i}"})

    return reader, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        reader, record = workload(args.series)
        record(0)
        collect_us = timed(reader.collect, args.repeat)
        data = reader.get_metrics_data()
        assert isinstance(data, MetricsData)
        points = sum(
            len(m.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )

        exporter = PrometheusMultiprocessExporter(directory)
        started = time.perf_counter()
        exporter.export(data)
        cold_us = (time.perf_counter() - started) * 1e6
        steady_us = timed(lambda: exporter.export(data), args.repeat)

        changed: list[MetricsData] = []
        for step in range(1, args.repeat + 1):
            record(step)
            snapshot = reader.get_metrics_data()
            assert isinstance(snapshot, MetricsData)
            changed.append(snapshot)
        batches = iter(changed)
        changed_us = timed(lambda: exporter.export(next(batches)), args.repeat)

        second = PrometheusMultiprocessExporter(directory)
        second._pid += 1  # a second worker's files, as gunicorn would have them
        second.export(changed[-1])
        body, _ = render_metrics(directory)
        scrape_us = timed(lambda: render_metrics(directory), max(10, args.repeat // 10))

    print(f"data points per export: {points} (counter, histogram and gauge series)")
    print(f"SDK collect (InMemoryMetricReader):   {collect_us:9.0f} us")
    print(f"bridge export, cold (first):          {cold_us:9.0f} us")
    print(f"bridge export, steady, unchanged:     {steady_us:9.0f} us  ({steady_us / points:.2f} us/point)")
    print(f"bridge export, every value changed:   {changed_us:9.0f} us  ({changed_us / points:.2f} us/point)")
    print(f"render_metrics, 2 workers' files:     {scrape_us:9.0f} us  ({len(body)} bytes)")


if __name__ == "__main__":
    main()
