"""Runtime probes: a blocked event loop and a GIL-hogging thread must show up in their histograms."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from app.runtime.probes import LoopLagProbe, WakeupDelaySampler
from tests.conftest import wait_until


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    metric_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[metric_reader])
    yield metric_reader, provider
    provider.shutdown()


def histogram(reader: InMemoryMetricReader, name: str) -> HistogramDataPoint | None:
    data = reader.get_metrics_data()
    if data is None:
        return None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    (point,) = metric.data.data_points
                    assert isinstance(point, HistogramDataPoint)
                    return point
    return None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=event_loop.run_forever, daemon=True)
    thread.start()
    yield event_loop
    event_loop.call_soon_threadsafe(event_loop.stop)
    thread.join(5)
    event_loop.close()


def test_blocked_loop_raises_the_loop_lag_histogram(
    loop: asyncio.AbstractEventLoop, reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    metric_reader, provider = reader
    probe = LoopLagProbe(loop, interval_s=0.01, meter_provider=provider)
    probe.start()
    probe.start()  # idempotent
    baseline = wait_until(
        lambda: (p := histogram(metric_reader, "platform.eventloop.delay")) and p.count >= 5 and p,
        message="the probe to take a few samples",
    )
    assert baseline.max < 0.2
    assert dict(baseline.attributes or {}) == {"loop": "grpc"}

    loop.call_soon_threadsafe(time.sleep, 0.3)  # a callback that blocks the loop
    blocked = wait_until(
        lambda: (p := histogram(metric_reader, "platform.eventloop.delay")) and p.max >= 0.25 and p,
        message="the loop-lag histogram to see the 300 ms block",
    )
    assert blocked.sum - baseline.sum >= 0.25

    probe.stop()
    wait_until(lambda: not probe.running, message="the probe to stop")
    count = histogram(metric_reader, "platform.eventloop.delay")
    time.sleep(0.05)  # negative check: give a stopped probe the time to (wrongly) record again
    after = histogram(metric_reader, "platform.eventloop.delay")
    assert count is not None and after is not None and after.count == count.count


def test_probe_can_be_stopped_from_its_own_loop(
    loop: asyncio.AbstractEventLoop, reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    probe = LoopLagProbe(loop, interval_s=0.01, meter_provider=reader[1])
    probe.start()
    assert probe.running
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    loop.call_soon_threadsafe(probe.stop)
    wait_until(lambda: not probe.running, message="the probe to stop from its loop")
    probe.start()  # restartable
    assert probe.running
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.02), loop).result(5)  # let it run before stopping
    probe.stop()


def _hold_the_gil_for(seconds: float) -> None:
    """Builtin calls on big ranges run in C without a chance to drop the GIL; repeat until time is up."""
    n = 200_000
    started = time.perf_counter()
    sum(range(n))
    while (time.perf_counter() - started) < 0.02:  # calibrate one call to ~50 ms
        n *= 2
        started = time.perf_counter()
        sum(range(n))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(range(n * 3))


def test_gil_hog_raises_the_wakeup_delay(reader: tuple[InMemoryMetricReader, MeterProvider]) -> None:
    metric_reader, provider = reader
    sampler = WakeupDelaySampler(interval_s=0.005, meter_provider=provider)
    sampler.start()
    sampler.start()  # idempotent
    baseline = wait_until(
        lambda: (p := histogram(metric_reader, "platform.thread.wakeup_delay")) and p.count >= 5 and p,
        message="the sampler to take a few samples",
    )
    assert baseline.max < 0.03
    assert not baseline.attributes

    hog = threading.Thread(target=_hold_the_gil_for, args=(0.6,), daemon=True)
    hog.start()
    starved = wait_until(
        lambda: (p := histogram(metric_reader, "platform.thread.wakeup_delay")) and p.max >= 0.03 and p,
        message="the wake-up delay histogram to see the starvation",
    )
    hog.join(10)
    assert starved.max >= 0.03
    sampler.stop()
    assert not sampler.running


def test_interval_must_be_positive(loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagProbe(loop, interval_s=0)
    with pytest.raises(ValueError, match="interval_s"):
        WakeupDelaySampler(interval_s=-1)
