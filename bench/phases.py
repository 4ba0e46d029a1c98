"""The three phases of a bench run, each in interleaved rounds so that drift in the machine hits every
variant alike; every phase starts a fresh server per variant and round.

1. throughput: each variant at full speed, per transport (the bare app over HTTP only);
2. latency: each variant of the service at a fixed offered rate, half of `off`'s median maximum;
3. memory: each variant of the service after a number of requests, RSS per worker.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench import procfs
from bench.instance import Instance
from bench.processes import BenchFailure, Children, free_port
from bench.results import MemorySample, Results
from bench.servers import Server, app_environment, ensure_item, start_hello, start_service
from bench.stack import Stack, grpc_response_bytes
from bench.variants import (
    BARE,
    BASELINE,
    Check,
    Evidence,
    Transport,
    environment,
    prove,
    summary,
    transports_of,
)


@dataclass(frozen=True)
class Plan:
    variants: tuple[str, ...]  # BASELINE first
    transports: tuple[Transport, ...]
    seconds: float
    warmup_s: float
    rounds: int
    connections: int
    rss_requests: int

    @property
    def service_variants(self) -> tuple[str, ...]:
        return tuple(v for v in self.variants if v != BARE)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, plan: Plan, stack: Stack, children: Children, *, keep_logs: bool = False) -> None:
        self.plan = plan
        self.keep_logs = keep_logs
        self.stack = stack
        self.children = children
        self.results = Results()
        self._started = 0
        self._nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def run(self) -> Results:
        self.throughput()
        self.latency()
        self.memory()
        return self.results

    # -- one server of one variant -------------------------------------------------------------------

    def _start(self, variant: str) -> tuple[Server, int | None]:
        self._started += 1
        workdir = self.stack.workdir / f"{self._started:03d}-{variant}"
        workdir.mkdir()
        if variant == BARE:
            return start_hello(self.children, workdir), None
        env = environment(variant, self.stack.sink.endpoint, self._nowhere)
        base = app_environment(self.stack.workdir, self.stack.redis_url)
        server = start_service(self.children, variant, base, env, workdir)
        try:
            return server, grpc_response_bytes(ensure_item(server, self.stack.token))
        except BaseException:
            self.children.stop(server.child)
            raise

    @contextmanager
    def serving(self, variant: str) -> Iterator[Instance]:
        """A fresh server of `variant`; once stopped, what it did must prove the variant (bench.variants)."""
        sink = self.stack.sink
        received_before, sink_cpu_before = sink.received(), procfs.cpu_seconds(sink.child.pid)
        server, grpc_bytes = self._start(variant)
        try:
            instance = Instance(variant, server, self.stack, self.plan.connections, grpc_bytes)
            yield instance
            families, sampled = instance.metrics_at_end()
        except BenchFailure as failure:
            raise BenchFailure(
                f"{failure}\n--- {variant}'s log, last lines:\n{server.child.log_tail()}"
            ) from None
        finally:
            self.children.stop(server.child)
        evidence = Evidence(
            variant,
            dict(instance.served),
            families,
            sampled,
            sink.received() - received_before,
            procfs.cpu_seconds(sink.child.pid) - sink_cpu_before,
        )
        checks = prove(evidence)
        if failed := [c for c in checks if not c.ok]:
            self._invalid(variant, evidence, failed)
        self.results.proofs[variant] = (evidence, checks)
        if not self.keep_logs:  # an access line per request: they add up
            shutil.rmtree(server.child.log_path.parent, ignore_errors=True)

    def _invalid(self, variant: str, evidence: Evidence, failed: list[Check]) -> None:
        """Not what it claims: its numbers are left out and it is not started again; without `off` there is
        nothing to compare with, so the run stops."""
        lines = "\n".join(f"  {c.what}: {c.detail or '-'}" for c in failed)
        message = (
            f"{variant} is NOT what it claims:\n{lines}\n  what reached the receiver: {summary(evidence)}"
        )
        if variant == BASELINE:
            raise BenchFailure(message)
        self.results.invalid[variant] = (evidence, failed)
        progress(f"[proof] {message}\n  ({variant} is left out of the rest of the run)")

    def _valid(self, variants: tuple[str, ...]) -> list[str]:
        return [v for v in variants if self.results.valid(v)]

    # -- phases --------------------------------------------------------------------------------------

    def throughput(self) -> None:
        plan = self.plan
        for round_ in range(1, plan.rounds + 1):
            for variant in self._valid(plan.variants):
                transports = transports_of(variant, plan.transports)
                if not transports:
                    continue  # the bare app with gRPC alone
                with self.serving(variant) as instance:
                    # Warm-ups first, so that the measured runs follow one another (no settling between).
                    warm = {t: instance.warm_up(t, plan.warmup_s) for t in transports}
                    for transport in transports:
                        run = instance.full_speed(transport, plan.seconds, warm[transport].rate)
                        self.results.throughput.append(run)
                        step = f"[throughput {round_}/{plan.rounds}] {variant} {transport}"
                        progress(f"{step}: {run.rate:,.0f} req/s")

    def latency(self) -> None:
        plan = self.plan
        for transport in plan.transports:
            maximum = self.results.median_rate(BASELINE, transport)
            if maximum is None:
                raise BenchFailure(f"no {BASELINE} {transport} throughput to derive the fixed load from")
            self.results.fixed_rates[transport] = maximum / 2
        for round_ in range(1, plan.rounds + 1):
            for variant in self._valid(plan.service_variants):
                with self.serving(variant) as instance:
                    for transport in plan.transports:
                        instance.warm_up(transport, plan.warmup_s)
                    for transport in plan.transports:
                        rate = self.results.fixed_rates[transport]
                        log = self.stack.workdir / f"latency-{variant}-{transport}.log"
                        run = instance.fixed_rate(transport, rate, plan.seconds, log)
                        self.results.latency.append(run)
                        progress(
                            f"[latency {round_}/{plan.rounds}] {variant} {transport} at {rate:,.0f} req/s: "
                            f"{run.load.rate:,.0f} req/s done"
                        )

    def memory(self) -> None:
        plan = self.plan
        share = plan.rss_requests // len(plan.transports)
        for variant in self._valid(plan.service_variants):
            with self.serving(variant) as instance:
                for transport in plan.transports:
                    instance.requests(transport, share)
                rss = tuple(procfs.rss_bytes(pid) for pid in instance.server.workers())
                served = sum(instance.served.values())
                self.results.memory.append(MemorySample(variant, served, rss))
                progress(f"[memory] {variant}: {', '.join(f'{b / 2**20:.0f} MiB' for b in rss)}")
