"""Unit-test fixtures: in-memory OpenTelemetry providers (set once per session) and test Settings.

The global tracer and meter providers can be set only once per process, so they are installed by a
session-scoped autouse fixture before any component builds its instruments. They are the SDK's own
providers, as the platform distro's configurator builds them in a worker (app.telemetry.distro), with
in-memory exporters and readers in place of OTLP and /metrics. Metrics are cumulative over the session:
tests use their own names (breaker names, task names) or compare before/after values.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.domain import context
from app.settings import Settings, b64encode, load_settings
from app.telemetry import logging as tlog

_SPAN_EXPORTER = InMemorySpanExporter()
_METRIC_READER = InMemoryMetricReader()


@pytest.fixture(scope="session", autouse=True)
def otel_providers() -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_SPAN_EXPORTER))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_METRIC_READER]))
    if trace.get_tracer_provider() is not tracer_provider:
        pytest.fail("another global TracerProvider was set before the unit tests' one")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The session's span exporter, emptied for this test."""
    _SPAN_EXPORTER.clear()
    return _SPAN_EXPORTER


class Metrics:
    """Reads the current cumulative value of metric points from the in-memory reader."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self._reader = reader

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self._reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return found

    def value(self, metric: str, /, **attrs: Any) -> float:
        """Sum (counters), last value (gauges) or count (histograms) of points matching `attrs`."""
        total = 0.0
        for point_attrs, point in self.points(metric):
            if all(point_attrs.get(k) == v for k, v in attrs.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total


@pytest.fixture
def metric_values() -> Metrics:
    return Metrics(_METRIC_READER)


@dataclass
class Captured:
    stream: io.StringIO
    otlp: InMemoryLogRecordExporter

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        # Lines end at "\n" only, as for log shippers; splitlines() would also split inside a value at U+2028.
        return [json.loads(line) for line in self.text().split("\n") if line]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The root logger's handlers as in a worker: our stdout handler (into a buffer), and the logging
    instrumentation's OTLP handler (into memory) prepared by the distro."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    root.handlers = [
        tlog.json_stdout_handler(stream, "platform-api"),
        LoggingHandler(logger_provider=provider),
    ]
    root.setLevel(logging.DEBUG)
    tlog.prepare_otlp_handlers()
    tlog.set_context_fields(context.log_fields)
    try:
        yield Captured(stream, exporter)
    finally:
        tlog.set_context_fields(None)
        root.handlers, root.level = handlers, level
        provider.shutdown()


def settings_env(**overrides: Any) -> dict[str, str]:
    env = {
        "APP_ENV": "test",
        "AUTH_SIGNING_KEY": b64encode(os.urandom(32)),
        "CRYPTO_KEYS": f"k1:{b64encode(os.urandom(32))}",
        "CRYPTO_SIGNING_KEY": b64encode(os.urandom(32)),
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., Settings]:
    """Settings for a test: fresh random keys, the test redis; keyword overrides by field name."""

    def make(**overrides: Any) -> Settings:
        return load_settings(settings_env(**{"redis_url": redis_url, **overrides}))

    return make


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    yield client
    client.close()
