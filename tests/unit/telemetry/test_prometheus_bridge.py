"""The /metrics bridge: Prometheus names as the OTLP translation gives them, summed over real processes."""

from __future__ import annotations

import bisect
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from prometheus_client.parser import text_string_to_metric_families

from app.telemetry import prometheus_bridge as bridge
from app.telemetry.environment import MULTIPROC_ENV
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
    assert len(CONTRACT_ROWS) == 48  # 32 of the service (6 of them the jobs'), 16 of the SDK
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


def test_gauge_modes_follow_the_contract() -> None:
    modes = {"gauge (live max)": "livemax", "gauge (per worker)": "liveall"}
    documented = {otel: modes[doc_type] for otel, doc_type, _, _ in CONTRACT_ROWS if doc_type in modes}
    assert documented == bridge.GAUGE_MODES


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
from app.telemetry.prometheus_bridge import PrometheusMultiprocessMetricReader

n, state = int(sys.argv[1]), sys.argv[2]
reader = PrometheusMultiprocessMetricReader(export_interval_millis=float("inf"))
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
    """A process with its own OTel MeterProvider whose prometheus_multiprocess reader writes `directory`."""

    def __init__(self, directory: Path, n: int, breaker: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), MULTIPROC_ENV: str(directory)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(n), breaker],
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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(directory: Path | None = None) -> Samples:
    body, content_type = bridge.render_metrics(str(directory) if directory else None)
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

    # Per worker, so that a reader sees which worker's breaker is open.
    def state(pid: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("platform_circuit_breaker_state", (("name", "quotes"), ("pid", str(pid)), ("state", "open")))

    assert samples[state(a.pid)] == 1
    assert samples[state(b.pid)] == 0

    a.stop()
    bridge.mark_worker_dead(a.pid, str(directory))
    samples = scrape(directory)
    assert samples[("platform_cache_requests_total", hit)] == 7  # a dead worker's counts stay
    assert samples[("http_server_request_duration_seconds_count", route)] == 7
    assert samples[("platform_cache_size", (("cache", "items"),))] == 4  # ... its live gauges go
    assert samples[("platform_workers", ())] == 1
    assert [k for k in samples if k[0] == "platform_circuit_breaker_state"] == [state(b.pid)]


def test_output_passes_promtool(workers: tuple[Path, list[Worker]]) -> None:
    directory, started = workers
    started.append(Worker(directory, 2, "open"))
    body, _ = bridge.render_metrics(str(directory))
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# -- in this process: it writes the session's multiprocess directory (tests/conftest.py) ----------------


def _reader_and_provider() -> tuple[PeriodicExportingMetricReader, MeterProvider]:
    reader = bridge.PrometheusMultiprocessMetricReader(export_interval_millis=float("inf"))
    return reader, MeterProvider(metric_readers=[reader])


def test_values_follow_the_instruments_and_unobserved_gauges_drop_to_zero() -> None:
    reader, provider = _reader_and_provider()
    meter = provider.get_meter("test")
    name = f"test.values.{uuid.uuid4().hex[:8]}"
    counter = meter.create_counter(f"{name}.rejections", unit="{task}")
    observed = {"items": 5, "quotes": 2}

    def sizes(_options: CallbackOptions) -> list[Observation]:
        return [Observation(v, {"cache": k}) for k, v in observed.items()]

    meter.create_observable_gauge(f"{name}.size", unit="{entry}", callbacks=[sizes])
    counter.add(2, {"task": "hash"})
    reader.collect()
    counter.add(3, {"task": "hash"})
    observed.pop("quotes")
    observed["items"] = 6
    reader.collect()
    samples = scrape()
    prefix = name.replace(".", "_")
    assert samples[(f"{prefix}_rejections_total", (("task", "hash"),))] == 5
    assert samples[(f"{prefix}_size", (("cache", "items"),))] == 6
    assert samples[(f"{prefix}_size", (("cache", "quotes"),))] == 0
    provider.shutdown()


def test_histograms_come_out_exact_over_several_collections() -> None:
    reader, provider = _reader_and_provider()
    name = f"test.latency.{uuid.uuid4().hex[:8]}"
    histogram = provider.get_meter("test").create_histogram(
        name, unit="s", explicit_bucket_boundaries_advisory=[0.1, 0.5, 1.0]
    )
    values = [0.01, 0.1, 0.2, 0.7, 3.0, 0.05, 1.0, 9.5]
    for value in values[:5]:
        histogram.record(value, {"route": "/a"})
    reader.collect()
    for value in values[5:]:
        histogram.record(value, {"route": "/a"})
    reader.collect()
    samples = scrape()
    prefix = f"{name.replace('.', '_')}_seconds"
    route = (("route", "/a"),)
    assert [samples[(f"{prefix}_bucket", (("le", le), *route))] for le in ("0.1", "0.5", "1.0", "+Inf")] == [
        3,
        4,
        6,
        8,
    ]
    assert samples[(f"{prefix}_count", route)] == 8
    assert samples[(f"{prefix}_sum", route)] == pytest.approx(sum(values))
    provider.shutdown()


BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@given(st.lists(st.floats(min_value=0.0, max_value=60.0, allow_nan=False), min_size=1, max_size=200))
def test_replayed_observations_fall_in_their_buckets_and_add_up(values: list[float]) -> None:
    growth = [0] * (len(BOUNDS) + 1)
    for value in values:
        growth[bisect.bisect_left(BOUNDS, value)] += 1
    replayed = list(bridge.replay(BOUNDS, growth, sum(values), min(values), max(values)))
    assert sum(times for _, times in replayed) == len(values)
    for value, times in replayed:
        assert times == growth[bisect.bisect_left(BOUNDS, value)], (value, replayed)
    assert math.isclose(sum(v * n for v, n in replayed), sum(values), rel_tol=1e-9, abs_tol=1e-9)


def _export_in_forked_child(reader: PeriodicExportingMetricReader) -> None:
    reader.collect()


def test_a_forked_child_does_not_write_into_the_parents_files() -> None:
    reader, provider = _reader_and_provider()
    name = f"test.forked.{uuid.uuid4().hex[:8]}"
    counter = provider.get_meter("test").create_counter(name, unit="{task}")
    counter.add(1, {"task": "hash"})
    reader.collect()
    counter.add(10, {"task": "hash"})  # recorded, then the child (a copy) exports it: it must not land
    child = multiprocessing.get_context("fork").Process(target=_export_in_forked_child, args=(reader,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert not list(Path(os.environ[MULTIPROC_ENV]).glob(f"*_{child.pid}.db"))
    assert scrape()[(f"{name.replace('.', '_')}_total", (("task", "hash"),))] == 1
    provider.shutdown()


def test_prepare_multiproc_dir_empties_and_exports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    directory = tmp_path / "multiproc"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "keep.txt").write_text("not ours")
    assert bridge.prepare_multiproc_dir(str(directory)) == str(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]
    assert os.environ[MULTIPROC_ENV] == str(directory)
    assert bridge.prepare_multiproc_dir(str(tmp_path / "new")) == str(tmp_path / "new")
    assert (tmp_path / "new").is_dir()


def test_without_a_directory_the_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        bridge.render_metrics()
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        bridge.PrometheusMultiprocessMetricReader()
