"""The markdown report: where and how it was measured, the targets, the measurements, each variant's proof."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.results import Results, element_median, ratio
from bench.stats import median
from bench.variants import BARE, BASELINE, TRANSPORTS, VARIANT_ENVIRONMENT, Transport, summary

SHIPPED, STOCK, DOWN = "shipped", "stock", "shipped-endpoint-down"
# What `stock` swaps back to contrib's, per transport.
SERVER_INSTRUMENTATION = {"http": "Flask", "grpc": "gRPC server"}
LABEL = {"http": "HTTP", "grpc": "gRPC"}


@dataclass(frozen=True)
class Target:
    measure: str
    target: str
    value: float | None
    met: Callable[[float], bool]

    def row(self) -> str:
        if self.value is None:
            return f"| {self.measure} | {self.target} | not measured | - |"
        met = "met" if self.met(self.value) else "NOT MET"
        return f"| {self.measure} | {self.target} | {self.value:.2f} | {met} |"


def _at_least(bound: float) -> Callable[[float], bool]:
    return lambda value: value >= bound


def targets(results: Results) -> list[Target]:
    """Each target: what is compared, the bound, numerator and denominator, and the test of their ratio."""
    rate, rss = results.median_rate, results.mean_rss

    def p99(variant: str, transport: Transport) -> float | None:
        return _p(results, variant, transport, 99)

    rows: list[tuple[str, str, float | None, float | None, Callable[[float], bool]]] = [
        (
            "real read `off` / bare hello, HTTP",
            ">= 0.5",
            rate(BASELINE, "http"),
            rate(BARE, "http"),
            _at_least(0.5),
        ),
        *[
            (
                f"shipped / off, real read, {LABEL[t]}",
                ">= 0.85",
                rate(SHIPPED, t),
                rate(BASELINE, t),
                _at_least(0.85),
            )
            for t in TRANSPORTS
        ],
        *[
            (
                f"shipped / stock, {LABEL[t]} (stock: contrib's {SERVER_INSTRUMENTATION[t]} instrumentation)",
                "> 1.0",
                rate(SHIPPED, t),
                rate(STOCK, t),
                lambda v: v > 1.0,
            )
            for t in TRANSPORTS
        ],
        *[
            (
                f"shipped-endpoint-down / shipped, {LABEL[t]}",
                ">= 0.95",
                rate(DOWN, t),
                rate(SHIPPED, t),
                _at_least(0.95),
            )
            for t in TRANSPORTS
        ],
        (
            "RSS per worker, endpoint down / up",
            "within 10% (0.90 to 1.10)",
            rss(DOWN),
            rss(SHIPPED),
            lambda v: 0.9 <= v <= 1.1,
        ),
        *[
            (
                f"p99 at half load, shipped / off, {LABEL[t]}",
                "<= 1.3",
                p99(SHIPPED, t),
                p99(BASELINE, t),
                lambda v: v <= 1.3,
            )
            for t in TRANSPORTS
        ],
    ]
    return [Target(measure, bound, ratio(a, b), met) for measure, bound, a, b, met in rows]


def _p(results: Results, variant: str, transport: Transport, p: float) -> float | None:
    found = results.latency_percentiles(variant, transport)
    return found[p] if found else None


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def throughput_table(results: Results, variants: Iterable[str], transports: Iterable[Transport]) -> list[str]:
    rows = []
    for transport in transports:
        base = results.median_rate(BASELINE, transport)
        for variant in variants:
            runs = results.runs(variant, transport)
            if not runs:
                continue
            rate = median([r.rate for r in runs])
            shares = element_median(r.shares for r in runs)
            rows.append(
                [
                    f"`{variant}`",
                    LABEL[transport],
                    f"{rate:,.0f}",
                    ", ".join(f"{r.rate:,.0f}" for r in runs),
                    _ratio(ratio(rate, base)),
                    f"{median([r.cpu_per_request_us for r in runs]):,.0f} us",
                    " / ".join(f"{s:.0%}" for s in shares),
                    f"{runs[0].load.tool} {median([r.client_cpu_share for r in runs]):.0%}",
                ]
            )
    header = [
        "variant",
        "transport",
        "median req/s",
        "runs",
        "ratio to off",
        "worker CPU per request",
        "workers' CPU shares",
        "client CPU (of one core)",
    ]
    return _table(header, rows)


def latency_table(results: Results, variants: Iterable[str], transports: Iterable[Transport]) -> list[str]:
    rows = []
    for transport in transports:
        base_p99 = _p(results, BASELINE, transport, 99)
        for variant in variants:
            runs = results.latency_runs(variant, transport)
            found = results.latency_percentiles(variant, transport)
            if not runs or not found:
                continue
            rows.append(
                [
                    f"`{variant}`",
                    LABEL[transport],
                    f"{runs[0].offered_rate:,.0f}",
                    ", ".join(f"{r.load.rate:,.0f}" for r in runs),
                    _ms(found[50]),
                    _ms(found[90]),
                    _ms(found[99]),
                    _ratio(ratio(found[99], base_p99)),
                    f"{sum(len(r.latencies_us) for r in runs):,}",
                ]
            )
    header = [
        "variant",
        "transport",
        "offered req/s",
        "achieved req/s",
        "p50",
        "p90",
        "p99",
        "p99 / off's",
        "requests",
    ]
    return _table(header, rows)


def memory_table(results: Results) -> list[str]:
    up = results.mean_rss(SHIPPED)
    rows = [
        [
            f"`{m.variant}`",
            f"{m.requests:,}",
            ", ".join(f"{b / 2**20:.1f}" for b in m.rss_bytes),
            f"{m.mean_rss / 2**20:.1f}",
            _ratio(ratio(m.mean_rss, up)),
        ]
        for m in results.memory_samples()
    ]
    return _table(
        ["variant", "requests served", "RSS per worker (MiB)", "mean (MiB)", "mean / shipped's"], rows
    )


def proof_table(results: Results) -> list[str]:
    rows = []
    for variant, (evidence, checks) in results.proofs.items():
        env = VARIANT_ENVIRONMENT.get(variant, {})
        setting = "<br>".join(f"`{k}={v}`" for k, v in env.items()) or "no telemetry, plain gunicorn"
        served = ", ".join(f"{LABEL[t]} {n:,}" for t, n in evidence.requests.items() if n)
        shown = "<br>".join(
            ("" if c.ok else "**FAILED**: ") + c.what + (f" ({c.detail})" if c.detail else "") for c in checks
        )
        receiver = f"{summary(evidence)}; receiver CPU {evidence.receiver_cpu_s:.1f} s"
        rows.append([f"`{variant}`", setting, served, receiver, shown])
    header = ["variant", "environment", "requests served", "what reached the OTLP receiver", "checks"]
    return _table(header, rows)


def invalid_section(results: Results) -> list[str]:
    if not results.invalid:
        return []
    lines = ["## Variants that are NOT what they claim: their numbers are left out", ""]
    for variant, (evidence, failed) in results.invalid.items():
        lines.append(f"- `{variant}`: " + "; ".join(f"{c.what} ({c.detail or '-'})" for c in failed))
        lines.append(f"  (what reached the receiver: {summary(evidence)})")
    return [*lines, ""]


@dataclass(frozen=True)
class Context:
    """Where, when and how the bench ran, for the report's head."""

    command: str
    date: str
    machine: str
    tools: str
    load: list[str]
    variants: tuple[str, ...]
    transports: tuple[Transport, ...]


def render(results: Results, ctx: Context) -> str:
    service_variants = [v for v in ctx.variants if v != BARE]
    lines = [
        "# What the telemetry costs: the real service under load",
        "",
        f"- Command: `{ctx.command}`",
        f"- Date: {ctx.date}",
        f"- Machine: {ctx.machine}",
        f"- Tools: {ctx.tools}",
        *[f"- {line}" for line in ctx.load],
        "",
        *invalid_section(results),
        "## Targets",
        "",
        "| measure | target | measured | met |",
        "|---|---|---|---|",
        *[t.row() for t in targets(results)],
        "",
        "Each target not met is explained, by a profile (`python -m bench.profile`), in",
        "[docs/performance.md](../docs/performance.md).",
        "",
        "## Throughput at full speed",
        "",
        "Worker CPU per request: user + system time of the gunicorn workers during the run (/proc), per",
        "request.",
        "Shares: each worker's part of that CPU, busiest first (the balance between the workers).",
        "",
        *throughput_table(results, ctx.variants, ctx.transports),
        "",
        "## Latency at a fixed offered load (open model), half of `off`'s maximum",
        "",
        *latency_table(results, service_variants, ctx.transports),
        "",
        "## Memory",
        "",
        *memory_table(results),
        "",
        "## What each variant is, and how it proved it (its last server)",
        "",
        *proof_table(results),
        "",
    ]
    return "\n".join(lines)
