"""One collection, two destinations: /metrics files every export, OTLP at its own interval, never blocking."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from app.telemetry.metrics_fanout import FanOutMetricExporter, can_share_collection
from tests.conftest import wait_until


class Recording(MetricExporter):
    def __init__(self, gate: threading.Event | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.got: list[MetricsData] = []
        self.entered = threading.Event()
        self.gate = gate
        self.shut = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.got.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.shut = True


def snapshot(n: int) -> MetricsData:
    return MetricsData(resource_metrics=[n])  # type: ignore[list-item]  # identity is all that matters


def test_remote_gets_every_interval_and_local_every_export() -> None:
    now = [0.0]
    local, remote = Recording(), Recording()
    fan = FanOutMetricExporter(local, remote, remote_interval_s=5, clock=lambda: now[0])
    for i in range(12):  # one export a second
        now[0] = float(i)
        fan.export(snapshot(i))
        if i in (5, 10):
            wait_until(
                lambda i=i: remote.got and remote.got[-1].resource_metrics == [i], message=f"send at t={i}"
            )
    assert len(local.got) == 12
    assert [d.resource_metrics for d in remote.got] == [[5], [10]]


def test_a_stuck_collector_never_delays_metrics_and_only_the_newest_waits() -> None:
    now = [0.0]
    gate = threading.Event()
    local, remote = Recording(), Recording(gate=gate)
    fan = FanOutMetricExporter(local, remote, remote_interval_s=1, clock=lambda: now[0])
    now[0] = 1.0
    fan.export(snapshot(1))
    wait_until(remote.entered.is_set, message="the first send to be stuck in the collector")
    for i in range(2, 6):
        now[0] = float(i)
        fan.export(snapshot(i))  # returns at once although the remote is blocked
    assert len(local.got) == 5
    gate.set()
    wait_until(lambda: len(remote.got) == 2, message="the blocked send, then the newest snapshot")
    assert remote.got[-1].resource_metrics == [5]  # 2..4 were superseded (cumulative: nothing lost)


def test_shutdown_sends_the_final_snapshot() -> None:
    local, remote = Recording(), Recording()
    fan = FanOutMetricExporter(local, remote, remote_interval_s=3600)
    fan.export(snapshot(1))
    fan.shutdown(timeout_millis=4000)
    assert [d.resource_metrics for d in remote.got] == [[1]]
    assert local.shut
    assert remote.shut


def test_only_cumulative_exporters_share_the_collection() -> None:
    cumulative = Recording(preferred_temporality={int: AggregationTemporality.CUMULATIVE})
    delta = Recording(preferred_temporality={int: AggregationTemporality.DELTA})
    assert can_share_collection(cumulative)
    assert not can_share_collection(delta)
