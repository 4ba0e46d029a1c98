"""What a bench run measured, run by run, and the medians the report is made of."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.drivers import LoadResult
from bench.stats import median, percentiles
from bench.variants import Check, Evidence, Transport


@dataclass(frozen=True)
class ThroughputRun:
    """One run at full speed: what the client got, and the CPU each worker used meanwhile."""

    variant: str
    transport: Transport
    load: LoadResult
    worker_cpu_s: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.load.rate

    @property
    def cpu_per_request_us(self) -> float:
        return sum(self.worker_cpu_s) / self.load.requests * 1e6 if self.load.requests else 0.0

    @property
    def shares(self) -> tuple[float, ...]:
        """Each worker's share of the workers' CPU, busiest first."""
        total = sum(self.worker_cpu_s)
        return tuple(sorted((cpu / total for cpu in self.worker_cpu_s), reverse=True)) if total else ()

    @property
    def client_cpu_share(self) -> float:
        """The load generator's CPU as a share of one core over the run."""
        return self.load.client_cpu_s / self.load.seconds if self.load.seconds else 0.0


@dataclass(frozen=True)
class LatencyRun:
    """One run at a fixed offered rate (open model), with every request's latency."""

    variant: str
    transport: Transport
    offered_rate: float
    load: LoadResult
    latencies_us: tuple[int, ...]


@dataclass(frozen=True)
class MemorySample:
    variant: str
    requests: int
    rss_bytes: tuple[int, ...]  # per worker

    @property
    def mean_rss(self) -> float:
        return sum(self.rss_bytes) / len(self.rss_bytes)


@dataclass
class Results:
    throughput: list[ThroughputRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    fixed_rates: dict[Transport, float] = field(default_factory=dict)
    proofs: dict[str, tuple[Evidence, list[Check]]] = field(default_factory=dict)
    # Variants whose server did not prove what they claim: every measurement of theirs is left out.
    invalid: dict[str, tuple[Evidence, list[Check]]] = field(default_factory=dict)

    def valid(self, variant: str) -> bool:
        return variant not in self.invalid

    def runs(self, variant: str, transport: Transport) -> list[ThroughputRun]:
        if not self.valid(variant):
            return []
        return [r for r in self.throughput if r.variant == variant and r.transport == transport]

    def median_rate(self, variant: str, transport: Transport) -> float | None:
        runs = self.runs(variant, transport)
        return median([r.rate for r in runs]) if runs else None

    def latency_runs(self, variant: str, transport: Transport) -> list[LatencyRun]:
        if not self.valid(variant):
            return []
        return [r for r in self.latency if r.variant == variant and r.transport == transport]

    def latency_percentiles(self, variant: str, transport: Transport) -> dict[float, float] | None:
        """Percentiles of every request of every round, pooled."""
        pooled = [us for r in self.latency_runs(variant, transport) for us in r.latencies_us]
        return percentiles(pooled) if pooled else None

    def memory_samples(self) -> list[MemorySample]:
        return [m for m in self.memory if self.valid(m.variant)]

    def mean_rss(self, variant: str) -> float | None:
        samples = [m.mean_rss for m in self.memory_samples() if m.variant == variant]
        return median(samples) if samples else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def element_median(rows: Iterable[tuple[float, ...]]) -> tuple[float, ...]:
    """Position by position median of equally long tuples (e.g. worker shares, busiest first)."""
    rows = [r for r in rows if r]
    return tuple(median(column) for column in zip(*rows, strict=True)) if rows else ()
