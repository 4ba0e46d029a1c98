"""One started server of one variant: driven at full speed, at a fixed rate or for a number of requests,
and every run verified, so that a refused request or a variant that measures nothing stops the bench.

Verification of a run, beyond the load generator's own errors:
- gRPC: h2load counts HTTP 200 as success, and gRPC errors travel in trailers. Every successful GetItem
  carries the same Item, so the DATA bytes received must be exactly the successful calls times its size;
- the service's own count on /metrics (where the variant has it): the increase of successful requests
  must equal the client's (h2load, which finishes every request), or lie within the connections' worth
  of requests still in flight when wrk stopped; the increase of any other outcome must be zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from bench import drivers, procfs, scrape
from bench.drivers import H2load, LoadResult
from bench.processes import BenchFailure
from bench.results import LatencyRun, ThroughputRun
from bench.scrape import ServedCounts
from bench.servers import HELLO_PATH, ITEM_PATH, Server
from bench.stack import GRPC_METHOD, Stack
from bench.variants import BARE, BASELINE, Transport

EXPORT_INTERVAL_S = 1.0  # how often each worker writes its metrics for /metrics (app.telemetry)
SETTLE_TRIES = 8


class Instance:
    def __init__(
        self, variant: str, server: Server, stack: Stack, connections: int, grpc_bytes: int | None
    ) -> None:
        self.variant = variant
        self.server = server
        self.stack = stack
        self.connections = connections
        self.grpc_bytes = grpc_bytes  # DATA bytes of one successful GetItem
        self.served: dict[Transport, int] = {"http": 0, "grpc": 0}
        # `off` and the bare app count nothing; every other variant must (or the check fails loudly).
        self.counting = variant not in (BASELINE, BARE)
        self._counts: ServedCounts | None = None  # settled after the last verified run, if nothing ran since

    # -- what the load generators are pointed at ------------------------------------------------------

    def _h2load(
        self,
        transport: Transport,
        *,
        requests: int | None = None,
        seconds: float | None = None,
        rate: float | None = None,
        log_file: Path | None = None,
    ) -> H2load:
        if transport == "grpc":
            url = f"http://127.0.0.1:{self.server.grpc_port}{GRPC_METHOD}"
            base = H2load(url, self.connections, self.stack.grpc_headers, data=self.stack.grpc_request)
        else:
            base = H2load(self._http_url(), self.connections, self._http_headers(), http1=True)
        return replace(base, requests=requests, seconds=seconds, rate=rate, log_file=log_file)

    def _http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}{HELLO_PATH if self.variant == BARE else ITEM_PATH}"

    def _http_headers(self) -> dict[str, str]:
        return {} if self.variant == BARE else {"authorization": self.stack.auth["authorization"]}

    # -- runs ----------------------------------------------------------------------------------------

    def _wrk(self, seconds: float) -> LoadResult:
        return drivers.run_wrk(
            self._http_url(), seconds=seconds, connections=self.connections, headers=self._http_headers()
        )

    def warm_up(self, transport: Transport, seconds: float) -> LoadResult:
        """Full speed for a moment (caches, connections, lazy imports); gives the rate for sizing runs."""
        if transport == "http":
            result = self._wrk(seconds)
        else:
            result = drivers.run_h2load(self._h2load(transport, seconds=seconds))
        self._no_problems(transport, result)
        self.served[transport] += result.requests
        self._counts = None
        return result

    def full_speed(self, transport: Transport, seconds: float, warm_rate: float) -> ThroughputRun:
        """wrk for HTTP; for gRPC h2load with a request count sized from the warm-up to last `seconds`."""
        if transport == "http":
            result, cpu = self._measured(transport, partial(self._wrk, seconds), exact=False)
        else:
            load = self._h2load(transport, requests=round(warm_rate * seconds))
            result, cpu = self._measured(transport, lambda: drivers.run_h2load(load), exact=True)
        return ThroughputRun(self.variant, transport, result, cpu)

    def fixed_rate(self, transport: Transport, rate: float, seconds: float, log_file: Path) -> LatencyRun:
        load = self._h2load(transport, requests=round(rate * seconds), rate=rate, log_file=log_file)
        result, _cpu = self._measured(transport, lambda: drivers.run_h2load(load), exact=True)
        rows = drivers.parse_h2load_log(log_file.read_text())
        if bad := [status for status, _us in rows if not 200 <= status < 300]:
            raise BenchFailure(
                f"{self.variant} {transport}: {len(bad)} requests failed in the log ({bad[:5]})"
            )
        log_file.unlink()
        return LatencyRun(self.variant, transport, rate, result, tuple(us for _status, us in rows))

    def requests(self, transport: Transport, count: int) -> LoadResult:
        load = self._h2load(transport, requests=count)
        result, _cpu = self._measured(transport, lambda: drivers.run_h2load(load), exact=True)
        return result

    # -- verification --------------------------------------------------------------------------------

    def _measured(
        self, transport: Transport, run: Callable[[], LoadResult], *, exact: bool
    ) -> tuple[LoadResult, tuple[float, ...]]:
        before = self._counts or self._settled_counts()
        self._counts = None
        workers = self.server.workers()
        cpu_before = [procfs.cpu_seconds(pid) for pid in workers]
        result = run()
        if self.server.workers() != workers:
            hint = self.server.stopped_from_outside() or " (see the log)"
            raise BenchFailure(f"{self.variant}: a worker exited during the run{hint}")
        cpu = tuple(procfs.cpu_seconds(pid) - was for pid, was in zip(workers, cpu_before, strict=True))
        self._no_problems(transport, result)
        self._verify_bytes(transport, result)
        if before is not None:
            self._verify_counts(transport, result, before, exact=exact)
        self.served[transport] += result.requests
        return result, cpu

    def _no_problems(self, transport: Transport, result: LoadResult) -> None:
        if result.problems or result.requests == 0:
            problems = "; ".join(result.problems) or "no request succeeded"
            raise BenchFailure(f"{self.variant} {transport} ({result.tool}): {problems}")

    def _verify_bytes(self, transport: Transport, result: LoadResult) -> None:
        if transport != "grpc" or self.grpc_bytes is None:
            return
        expected = result.requests * self.grpc_bytes
        if result.data_bytes != expected:
            raise BenchFailure(
                f"{self.variant} gRPC: {result.data_bytes} DATA bytes for {result.requests} calls, expected "
                f"{expected} ({self.grpc_bytes} per successful GetItem): some calls failed"
            )

    def _verify_counts(
        self, transport: Transport, result: LoadResult, before: ServedCounts, *, exact: bool
    ) -> None:
        after = self._counts = self._settled_counts()
        assert after is not None
        if transport not in after.counted:
            return  # nothing to compare with: the variant's proof reports the missing metric
        ok = round(after.ok(transport) - before.ok(transport))
        not_ok = round(after.not_ok(transport) - before.not_ok(transport))
        low, high = result.requests, result.requests + (0 if exact else self.connections)
        if not_ok or not low <= ok <= high:
            raise BenchFailure(
                f"{self.variant} {transport}: the service counted {ok} successful and {not_ok} other "
                f"requests, the client {result.requests} successful"
                + ("" if exact else f" (+ up to {self.connections} in flight)")
            )

    def _settled_counts(self) -> ServedCounts | None:
        """The service's counts once every worker has written what it served (unchanged over an interval)."""
        if not self.counting:
            return None
        last = ServedCounts.from_metrics(self.server.metrics_text())
        for _ in range(SETTLE_TRIES):
            time.sleep(EXPORT_INTERVAL_S * 1.2)
            now = ServedCounts.from_metrics(self.server.metrics_text())
            if now == last:
                return now
            last = now
        raise BenchFailure(f"{self.variant}: /metrics did not settle")

    # -- what the instance proves --------------------------------------------------------------------

    def metrics_at_end(self) -> tuple[frozenset[str], float]:
        """Metric families on /metrics, and the spans the SDK sampled (otel_sdk_span_started_total)."""
        text = self.server.metrics_text()
        sampled = scrape.total(
            text,
            "otel_sdk_span_started_total",
            lambda labels: labels.get("otel_span_sampling_result") == "RECORD_AND_SAMPLE",
        )
        return frozenset(scrape.families(text)), sampled
