"""The in-process request-duration histogram exports exactly what the SDK histogram would, much cheaper."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

import app.telemetry.flask_instrumentation as fi
from app.telemetry.request_duration import SCOPE, MergingMetricExporter, RequestDurations
from app.telemetry.setup import DURATION_BUCKETS_S, metric_views
from tests.unit.test_telemetry_flask import REQUESTS, make_app

# Each request lasts one tick (15 ms) of this clock: both paths put it in the same bucket, same sum.
STEP_S = 0.015


class Captured(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def points(data: MetricsData | None) -> dict[frozenset[tuple[str, Any]], HistogramDataPoint]:
    found = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "http.server.request.duration":
                    assert sm.scope.name == SCOPE
                    assert (metric.unit, metric.data.aggregation_temporality) == (  # type: ignore[union-attr]
                        "s",
                        AggregationTemporality.CUMULATIVE,
                    )
                    for p in metric.data.data_points:
                        found[frozenset(p.attributes.items())] = p  # type: ignore[union-attr]
    return found


def serve_all(durations: RequestDurations | None, meter_provider: MeterProvider | None, sampler: Any) -> None:
    app = make_app()
    fi.FlaskInstrumentation(
        app,
        tracer_provider=TracerProvider(sampler=sampler),
        meter_provider=meter_provider,
        durations=durations,
    )
    client = app.test_client()
    for method, path, headers in REQUESTS:
        client.open(path, method=method, headers=headers)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(fi, "perf_counter", lambda: next(ticks) * STEP_S)


def test_same_points_as_the_sdk_histogram() -> None:
    reader = InMemoryMetricReader()
    serve_all(None, MeterProvider(metric_readers=[reader], views=metric_views()), ALWAYS_OFF)
    durations = RequestDurations(InstrumentationScope(SCOPE), DURATION_BUCKETS_S)
    serve_all(durations, MeterProvider(), ALWAYS_OFF)
    captured = Captured()
    MergingMetricExporter(captured, [durations], Resource.create({})).export(MetricsData(resource_metrics=[]))

    sdk, ours = points(reader.get_metrics_data()), points(captured.exports[0])
    assert len(sdk) == 4  # two GET item routes share one set; /nowhere 404; POST 201; /boom 500
    assert ours.keys() == sdk.keys()
    for attributes, expected in sdk.items():
        got = ours[attributes]
        assert (got.count, got.bucket_counts, got.explicit_bounds) == (
            expected.count,
            expected.bucket_counts,
            expected.explicit_bounds,
        )
        assert got.sum == pytest.approx(expected.sum)
        assert (got.min, got.max) == pytest.approx((expected.min, expected.max))
    boom = next(p for a, p in ours.items() if ("http.route", "/boom") in a)
    assert dict(boom.attributes)["error.type"] == "500"


def test_exemplars_point_at_sampled_requests_only() -> None:
    sampled = RequestDurations(InstrumentationScope(SCOPE), DURATION_BUCKETS_S)
    serve_all(sampled, MeterProvider(), ALWAYS_ON)
    unsampled = RequestDurations(InstrumentationScope(SCOPE), DURATION_BUCKETS_S)
    serve_all(unsampled, MeterProvider(), ALWAYS_OFF)
    with_exemplars = sampled.collect()
    without = unsampled.collect()
    assert with_exemplars is not None and without is not None
    for point in with_exemplars.data.data_points:
        (exemplar,) = point.exemplars  # type: ignore[union-attr]
        assert exemplar.trace_id and exemplar.span_id and exemplar.value == pytest.approx(STEP_S)
    assert all(not p.exemplars for p in without.data.data_points)  # type: ignore[union-attr]
    # Exemplars are per collection interval, the counts cumulative.
    again = sampled.collect()
    assert again is not None and all(not p.exemplars for p in again.data.data_points)  # type: ignore[union-attr]
    assert [p.count for p in again.data.data_points] == [p.count for p in with_exemplars.data.data_points]  # type: ignore[union-attr]


def test_attribute_sets_are_bounded() -> None:
    durations = RequestDurations(InstrumentationScope(SCOPE), (1.0,))
    context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    for i in range(2100):
        durations.record(0.5, i, lambda i=i: {"n": i}, context)  # type: ignore[misc]
    metric = durations.collect()
    assert metric is not None
    data_points = metric.data.data_points
    assert len(data_points) == 2001
    overflow = [p for p in data_points if dict(p.attributes or {}) == {"otel.metric.overflow": True}]
    assert len(overflow) == 1 and overflow[0].count == 100


def test_nothing_is_added_before_the_first_request() -> None:
    durations = RequestDurations(InstrumentationScope(SCOPE), DURATION_BUCKETS_S)
    empty = MetricsData(resource_metrics=[])
    assert MergingMetricExporter(Captured(), [durations], Resource.create({})).merge(empty) is empty
