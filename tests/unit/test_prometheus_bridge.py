"""The /metrics bridge: Prometheus names as the OTLP translation gives them, summed over real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client.parser import text_string_to_metric_families

from app.telemetry import prometheus_bridge as bridge
from app.telemetry.prometheus_names import MetricKind, label_name, labels, metric_name
from tests.conftest import ROOT

CONTRACT = (ROOT / "docs" / "telemetry.md").read_text()
_ROW = re.compile(
    r"^\| `([a-z0-9_.]+)` \| ([a-z -]+(?:\([a-z ]+\))?) \| ([^|]+) \| [^|]* \| `([a-z0-9_]+)` \|", re.M
)
CONTRACT_ROWS = [(m[1], m[2].strip(), m[3].strip(), m[4]) for m in _ROW.finditer(CONTRACT)]

_KINDS = {
    "histogram": MetricKind.HISTOGRAM,
    "counter": MetricKind.MONOTONIC_COUNTER,
    "up-down counter": MetricKind.NON_MONOTONIC_COUNTER,
}


def _kind(doc_type: str) -> MetricKind:
    return _KINDS.get(doc_type, MetricKind.GAUGE if doc_type.startswith("gauge") else MetricKind.HISTOGRAM)


def test_contract_table_is_parsed() -> None:
    assert len(CONTRACT_ROWS) == 25
    assert (
        "http.server.request.duration",
        "histogram",
        "s",
        "http_server_request_duration_seconds",
    ) in CONTRACT_ROWS


@pytest.mark.parametrize(
    ("otel", "doc_type", "unit", "prom"), CONTRACT_ROWS, ids=[r[0] for r in CONTRACT_ROWS]
)
def test_every_contract_name_is_the_otlp_translation(otel: str, doc_type: str, unit: str, prom: str) -> None:
    assert metric_name(otel, "" if unit == "—" else unit, _kind(doc_type)) == prom


def test_live_gauge_modes_follow_the_contract() -> None:
    live_max = {otel for otel, doc_type, _, _ in CONTRACT_ROWS if doc_type == "gauge (live max)"}
    assert live_max == set(bridge.LIVE_MAX_GAUGES)


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        # examples from otlptranslator's documentation and the OTel compatibility spec
        ("requests.count", "1", MetricKind.MONOTONIC_COUNTER, "requests_count_total"),
        ("memory.usage", "By", MetricKind.GAUGE, "memory_usage_bytes"),
        ("system.network.dropped", "{packets}", MetricKind.NON_MONOTONIC_COUNTER, "system_network_dropped"),
        ("system.network.dropped", "packets", MetricKind.GAUGE, "system_network_dropped_packets"),
        ("system.memory.utilization", "1", MetricKind.GAUGE, "system_memory_utilization_ratio"),
        ("system.memory.utilization", "1", MetricKind.NON_MONOTONIC_COUNTER, "system_memory_utilization"),
        ("(lambda).function.executions(#)", "", MetricKind.GAUGE, "lambda_function_executions"),
        ("net.io", "By/s", MetricKind.GAUGE, "net_io_bytes_per_second"),
        ("queries", "{query}/s", MetricKind.GAUGE, "queries_per_second"),
        ("latency.seconds", "s", MetricKind.HISTOGRAM, "latency_seconds"),  # unit token already present
        ("jobs.total.done", "", MetricKind.MONOTONIC_COUNTER, "jobs_done_total"),  # "total" moves to the end
        ("a__b..c", "ms", MetricKind.HISTOGRAM, "a_b_c_milliseconds"),
        ("2xx.responses", "", MetricKind.MONOTONIC_COUNTER, "_2xx_responses_total"),
        ("weird", "m/s/s", MetricKind.GAUGE, "weird_meters_per_s_s"),
        ("...", "", MetricKind.GAUGE, None),
    ],
)
def test_translation_rules(name: str, unit: str, kind: MetricKind, expected: str | None) -> None:
    assert metric_name(name, unit, kind) == expected


def test_label_rules() -> None:
    assert label_name("http.response.status_code") == "http_response_status_code"
    assert label_name("db.system.name") == "db_system_name"
    assert label_name("a..b--c") == "a_b_c"
    assert label_name("2xx") == "key_2xx"
    assert label_name("__name__") == "__name__"
    assert label_name("_private") == "_private"
    assert label_name("...") is None
    assert labels({"a.b": "x", "a_b": "y", "flag": True, "code": 200, "list": ["a", 1]}) == {
        "a_b": "x;y",
        "flag": "true",
        "code": "200",
        "list": '["a",1]',
    }


# -- the multiprocess files, written by real processes ---------------------------------------------

WORKER = r"""
import json, sys
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from app.telemetry.prometheus_bridge import PrometheusMultiprocessExporter

directory, n, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
exporter = PrometheusMultiprocessExporter(directory)
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=float("inf"))
meter = MeterProvider(metric_readers=[reader]).get_meter("test")
requests = meter.create_counter("platform.cache.requests", unit="{request}")
duration = meter.create_histogram(
    "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0]
)
size = meter.create_up_down_counter("platform.cache.size", unit="{entry}")
meter.create_observable_gauge(
    "platform.circuit_breaker.state",
    callbacks=[lambda _o: [Observation(1 if state == "open" else 0, {"name": "quotes", "state": "open"})]],
)
meter.create_observable_gauge("platform.workers", unit="{worker}", callbacks=[lambda _o: [Observation(1)]])
for i in range(n):
    requests.add(1, {"cache": "items", "result": "hit"})
    route = {"http.route": "/v1/items/<key>", "http.response.status_code": 200}
    duration.record(0.05 if i % 2 else 0.5, route)
size.add(n, {"cache": "items"})
reader.collect()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()  # stay alive (live gauges count) until the test lets go
"""


class Worker:
    def __init__(self, directory: Path, n: int, breaker: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(directory), str(n), breaker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert json.loads(line) == {"ready": True}, line
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Path, list[Worker]]]:
    directory = tmp_path / "prom"
    directory.mkdir()
    started: list[Worker] = []
    yield directory, started
    for worker in started:
        worker.stop()


def scrape(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = bridge.render_metrics(str(directory))
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_two_processes_are_summed_and_a_dead_ones_live_gauges_vanish(
    workers: tuple[Path, list[Worker]],
) -> None:
    directory, started = workers
    a = Worker(directory, 3, "open")
    started.append(a)
    b = Worker(directory, 4, "closed")
    started.append(b)

    samples = scrape(directory)
    hit = (("cache", "items"), ("result", "hit"))
    assert samples[("platform_cache_requests_total", hit)] == 7
    route = (("http_response_status_code", "200"), ("http_route", "/v1/items/<key>"))
    # a: i=0,2 -> 0.5 ; i=1 -> 0.05   b: i=0,2 -> 0.5 ; i=1,3 -> 0.05
    assert samples[("http_server_request_duration_seconds_bucket", (*route, ("le", "0.1")))] == 3
    assert samples[("http_server_request_duration_seconds_bucket", (*route, ("le", "1.0")))] == 7
    assert samples[("http_server_request_duration_seconds_bucket", (*route, ("le", "+Inf")))] == 7
    assert samples[("http_server_request_duration_seconds_count", route)] == 7
    assert samples[("http_server_request_duration_seconds_sum", route)] == pytest.approx(4 * 0.5 + 3 * 0.05)
    assert samples[("platform_cache_size", (("cache", "items"),))] == 7  # live sum
    assert samples[("platform_workers", ())] == 2
    state = (("name", "quotes"), ("state", "open"))
    assert samples[("platform_circuit_breaker_state", state)] == 1  # live max over 1 and 0

    a.stop()
    bridge.mark_worker_dead(a.pid, str(directory))
    samples = scrape(directory)
    assert samples[("platform_cache_requests_total", hit)] == 7  # a dead worker's counts stay
    assert samples[("http_server_request_duration_seconds_count", route)] == 7
    assert samples[("platform_cache_size", (("cache", "items"),))] == 4  # ... its live gauges go
    assert samples[("platform_workers", ())] == 1
    assert samples[("platform_circuit_breaker_state", state)] == 0


def test_output_passes_promtool(workers: tuple[Path, list[Worker]]) -> None:
    directory, started = workers
    started.append(Worker(directory, 2, "open"))
    body, _ = bridge.render_metrics(str(directory))
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def _exporter_and_meter(directory: Path) -> tuple[PeriodicExportingMetricReader, MeterProvider]:
    reader = PeriodicExportingMetricReader(
        bridge.PrometheusMultiprocessExporter(str(directory)), export_interval_millis=float("inf")
    )
    return reader, MeterProvider(metric_readers=[reader])


def test_values_follow_the_instruments_and_unobserved_gauges_drop_to_zero(tmp_path: Path) -> None:
    reader, provider = _exporter_and_meter(tmp_path)
    meter = provider.get_meter("test")
    counter = meter.create_counter("platform.pool.rejections", unit="{task}")
    observed = {"items": 5, "quotes": 2}

    def sizes(_options: CallbackOptions) -> list[Observation]:
        return [Observation(v, {"cache": k}) for k, v in observed.items()]

    meter.create_observable_gauge("platform.cache.size", unit="{entry}", callbacks=[sizes])
    counter.add(2, {"task": "hash"})
    reader.collect()
    counter.add(3, {"task": "hash"})
    observed.pop("quotes")
    observed["items"] = 6
    reader.collect()
    samples = scrape(tmp_path)
    assert samples[("platform_pool_rejections_total", (("task", "hash"),))] == 5
    assert samples[("platform_cache_size", (("cache", "items"),))] == 6
    assert samples[("platform_cache_size", (("cache", "quotes"),))] == 0
    provider.shutdown()


def _export_in_forked_child(reader: PeriodicExportingMetricReader) -> None:
    reader.collect()


def test_a_forked_child_does_not_write_into_the_parents_files(tmp_path: Path) -> None:
    reader, provider = _exporter_and_meter(tmp_path)
    counter = provider.get_meter("test").create_counter("platform.pool.rejections", unit="{task}")
    counter.add(1, {"task": "hash"})
    reader.collect()
    counter.add(10, {"task": "hash"})  # recorded, then the child (a copy) exports it: it must not land
    child = multiprocessing.get_context("fork").Process(target=_export_in_forked_child, args=(reader,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{os.getpid()}.db"]
    assert scrape(tmp_path)[("platform_pool_rejections_total", (("task", "hash"),))] == 1
    provider.shutdown()


def test_prepare_multiproc_dir_empties_and_exports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bridge.MULTIPROC_ENV, raising=False)
    directory = tmp_path / "multiproc"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    assert bridge.prepare_multiproc_dir(str(directory)) == str(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]
    assert os.environ[bridge.MULTIPROC_ENV] == str(directory)
    assert bridge.prepare_multiproc_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert (tmp_path / "new").is_dir()


def test_render_without_a_directory_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bridge.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(bridge, "_configured_dir", None)
    with pytest.raises(RuntimeError, match=bridge.MULTIPROC_ENV):
        bridge.render_metrics()


def test_series_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge, "MAX_CACHED_SERIES_PER_METRIC", 10)
    reader, provider = _exporter_and_meter(tmp_path)
    counter = provider.get_meter("test").create_counter("platform.pool.rejections", unit="{task}")
    for i in range(25):
        counter.add(1, {"task": f"t{i}"})
    reader.collect()
    reader.collect()
    samples = scrape(tmp_path)
    assert sum(v for (name, _), v in samples.items() if name == "platform_pool_rejections_total") == 25
    exporter = reader._exporter
    assert isinstance(exporter, bridge.PrometheusMultiprocessExporter)
    writer = exporter._writers["platform.pool.rejections"]
    assert writer is not None
    assert len(writer.series) <= 10
    provider.shutdown()
