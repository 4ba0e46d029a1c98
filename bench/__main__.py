"""`python -m bench`: what the telemetry costs on the real service, one command.

Starts redis-server, a counting OTLP receiver and, one after another, `python -m app serve` (2 workers)
in each telemetry variant (bench/variants.py), plus a bare Flask hello app under the same gunicorn
settings; drives an authenticated, cached item read over HTTP (wrk) and gRPC (h2load) in interleaved
rounds; checks that every request succeeded and that every variant is what it claims; prints a markdown
report. `--write` also writes it to bench/RESULTS.md.

Develop with `--quick` (a few minutes); the full run is for a quiet machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.deployment import HTTP_THREADS, WORKERS
from bench.drivers import H2LOAD_THREADS, WRK_THREADS
from bench.machine import describe_machine, describe_tools
from bench.phases import Bench, Plan
from bench.processes import BenchFailure, Children, exit_on_termination
from bench.report import Context, render
from bench.servers import ITEM_PATH, RATE_LIMIT
from bench.stack import GRPC_METHOD, missing_tools, open_stack
from bench.variants import BASELINE, DEFAULT_VARIANTS, OPT_IN, TRANSPORTS, VARIANTS, Transport

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True)
class Defaults:
    seconds: float
    warmup: float
    rounds: int
    rss_requests: int


FULL = Defaults(seconds=10, warmup=2, rounds=3, rss_requests=100_000)
QUICK = Defaults(seconds=3, warmup=1, rounds=1, rss_requests=10_000)


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if unknown := [n for n in names if n not in allowed]:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return names


@dataclass(frozen=True)
class Options:
    plan: Plan
    write: bool
    keep: bool


def parse_options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.seconds:g} s runs, {QUICK.warmup:g} s warm-ups, {QUICK.rounds} round, "
        f"{QUICK.rss_requests:,} requests before RSS (a few minutes in all; the defaults take ~30)",
    )
    parser.add_argument("--seconds", type=float, help=f"each measured run (default {FULL.seconds:g})")
    parser.add_argument("--warmup", type=float, help=f"warm-up before each run (default {FULL.warmup:g})")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL.rounds})")
    parser.add_argument(
        "--variants",
        type=lambda v: _names(v, VARIANTS, "variant"),
        default=DEFAULT_VARIANTS,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all but {', '.join(OPT_IN)}); "
        f"{BASELINE} always runs: every ratio and the fixed load are relative to it",
    )
    parser.add_argument(
        "--transports",
        type=lambda v: _names(v, TRANSPORTS, "transport"),
        default=TRANSPORTS,
        help="comma-separated, of http, grpc (default both)",
    )
    parser.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    parser.add_argument(
        "--rss-requests", type=int, help=f"requests before RSS is read (default {FULL.rss_requests:,})"
    )
    parser.add_argument("--write", action="store_true", help=f"also write the report to {RESULTS}")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (every server's log) and say where"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    variants: tuple[str, ...] = args.variants
    transports: tuple[Transport, ...] = args.transports
    plan = Plan(
        variants=(BASELINE, *(v for v in variants if v != BASELINE)),
        transports=transports,
        seconds=args.seconds or defaults.seconds,
        warmup_s=args.warmup or defaults.warmup,
        rounds=args.rounds or defaults.rounds,
        connections=args.connections,
        rss_requests=args.rss_requests or defaults.rss_requests,
    )
    return Options(plan, args.write, args.keep)


def load_description(plan: Plan, fixed_rates: dict[Transport, float]) -> list[str]:
    c = plan.connections
    fixed = ", ".join(f"{'HTTP' if t == 'http' else 'gRPC'} {r:,.0f} req/s" for t, r in fixed_rates.items())
    return [
        f"Service: `python -m app serve`, {WORKERS} gunicorn gthread workers x {HTTP_THREADS} HTTP threads, "
        f"each also serving gRPC (SO_REUSEPORT); APP_ENV=dev, RATE_LIMIT={RATE_LIMIT}, every other setting "
        "its default; no quotes upstream (the read never calls it).",
        f"Request: `GET {ITEM_PATH}` with a bearer token (HTTP) and unary `{GRPC_METHOD}` (gRPC), an item "
        "PUT once and then served from each worker's cache.",
        f"Throughput: {plan.rounds} interleaved round(s), a fresh server per variant and round, "
        f"{plan.warmup_s:g} s warm-up, then HTTP `wrk -t{WRK_THREADS} -c{c} -d{plan.seconds:g}s`, gRPC "
        f"`h2load -t{H2LOAD_THREADS} -c{c} -m1 -n N`, N sized from the warm-up to last {plan.seconds:g} s.",
        f"Latency: h2load `--rps` over {c} connections (`--h1` for HTTP), {plan.seconds:g} s, at half of "
        f"`off`'s median maximum: {fixed or 'not measured'}; percentiles of every request of every round.",
        f"Memory: VmRSS of each worker of a fresh server after {plan.rss_requests:,} requests "
        "(split over the transports, h2load at full speed).",
        "Verified: no non-2xx response and no socket error; gRPC DATA bytes = successful calls x one Item; "
        "where the variant counts, the service's own count on /metrics matches the client's.",
    ]


@contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    if not keep:
        with tempfile.TemporaryDirectory(prefix="platform-bench-") as tmp:
            yield Path(tmp)
        return
    path = Path(tempfile.mkdtemp(prefix="platform-bench-"))
    try:
        yield path
    finally:
        print(f"bench: logs kept in {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
    plan = options.plan
    if missing := missing_tools():
        print(
            f"bench: {', '.join(missing)} not found on PATH "
            "(Debian: apt-get install wrk nghttp2-client redis-server)",
            file=sys.stderr,
        )
        return 2
    exit_on_termination()
    machine, tools, date = (
        describe_machine(),
        describe_tools(),
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    try:
        with work_directory(options.keep) as workdir, Children() as children:
            bench = Bench(plan, open_stack(children, workdir), children, keep_logs=options.keep)
            results = bench.run()
    except BenchFailure as failure:
        print(f"bench: FAILED: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except SystemExit:  # SIGTERM or SIGHUP (exit_on_termination)
        print("bench: stopped by a signal; everything it started is stopped", file=sys.stderr)
        raise
    ctx = Context(
        command=shlex.join(["python", "-m", "bench", *argv]),
        date=date,
        machine=machine,
        tools=tools,
        load=load_description(plan, results.fixed_rates),
        variants=plan.variants,
        transports=plan.transports,
    )
    report = render(results, ctx)
    print(report)
    if options.write:
        RESULTS.write_text(report)
        print(f"bench: wrote {RESULTS}", file=sys.stderr)
    if results.invalid:
        print(f"bench: not what they claim: {', '.join(results.invalid)} (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
