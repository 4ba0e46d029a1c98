"""The report's targets table and tables from synthetic results (no process is started)."""

from __future__ import annotations

from bench.drivers import LoadResult
from bench.otlp_sink import Received
from bench.report import Context, render, targets
from bench.results import LatencyRun, MemorySample, Results, ThroughputRun
from bench.variants import Evidence, Transport


def run(variant: str, transport: Transport, rate: float) -> ThroughputRun:
    load = LoadResult("wrk" if transport == "http" else "h2load", int(rate * 10), 10.0, client_cpu_s=2.0)
    return ThroughputRun(variant, transport, load, (rate * 10 * 600e-6, rate * 10 * 400e-6))


def latency(variant: str, transport: Transport, p99_ms: float) -> LatencyRun:
    load = LoadResult("h2load", 100, 1.0)
    return LatencyRun(variant, transport, 100.0, load, tuple([1000] * 98 + [int(p99_ms * 1000)] * 2))


def results() -> Results:
    r = Results()
    rates = {"bare-hello": 2000, "off": 1200, "shipped": 1050, "stock": 800, "shipped-endpoint-down": 1040}
    for variant, rate in rates.items():
        r.throughput.append(run(variant, "http", rate))
        if variant != "bare-hello":
            r.throughput.append(run(variant, "grpc", rate * 0.8))
    r.latency += [latency("off", "http", 10), latency("shipped", "http", 14)]
    r.memory += [
        MemorySample("shipped", 100_000, (100 * 2**20, 100 * 2**20)),
        MemorySample("shipped-endpoint-down", 100_000, (130 * 2**20, 120 * 2**20)),
    ]
    r.proofs["off"] = (Evidence("off", {"http": 5, "grpc": 5}, frozenset(), 0, Received(), 0.0), [])
    return r


def test_targets_are_ratios_with_a_verdict() -> None:
    found = {t.measure: t for t in targets(results())}
    assert len(found) == 10
    framework = found["real read `off` / bare hello, HTTP"]
    assert framework.value == 0.6
    assert framework.row().endswith("| 0.60 | met |")
    assert found["shipped / off, real read, HTTP"].row().endswith("| 0.88 | met |")
    assert found["shipped / stock, HTTP (stock: contrib's Flask instrumentation)"].row().endswith("met |")
    assert (
        found["shipped / stock, gRPC (stock: contrib's gRPC server instrumentation)"]
        .row()
        .endswith("| 1.31 | met |")
    )
    assert found["RSS per worker, endpoint down / up"].row().endswith("| 1.25 | NOT MET |")
    assert found["p99 at half load, shipped / off, HTTP"].row().endswith("| 1.40 | NOT MET |")
    assert found["p99 at half load, shipped / off, gRPC"].row().endswith("| not measured | - |")


def test_render_names_the_run_and_every_measure() -> None:
    ctx = Context(
        "python -m bench --quick",
        "2026-01-01 00:00 UTC",
        "2 cores",
        "wrk",
        ["Load: x"],
        ("off", "shipped", "bare-hello"),
        ("http", "grpc"),
    )
    text = render(results(), ctx)
    assert "- Command: `python -m bench --quick`" in text
    assert "| `shipped` | HTTP | 1,050 | 1,050 | 0.88 | 1,000 us | 60% / 40% | wrk 20% |" in text
    assert "| `off` | HTTP | 100 | 100 | 1.00 ms | 1.00 ms | 10.00 ms | 1.00 | 100 |" in text
    assert "| `shipped-endpoint-down` | 200,000 |" not in text
    assert "| `shipped-endpoint-down` | 100,000 | 130.0, 120.0 | 125.0 | 1.25 |" in text
