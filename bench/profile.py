"""`python -m bench.profile VARIANT TRANSPORT`: where a worker's time goes, by the profile behind
docs/performance.md.

Starts the same stack and server as `python -m bench` (bench.phases), warms it up, then drives it at full
speed while py-spy samples every worker (`--gil`: only the thread holding the GIL, which is what a
request's CPU per request is made of under CPython). Prints, for each part of the code below, its share of
the samples (a sample belongs to the part of its innermost frame that has one, or to a background thread)
and the worker CPU per request that share amounts to. `--raw DIR` keeps py-spy's collapsed stacks (for a
flame graph).

Needs py-spy (`pip install py-spy`) and the right to trace the workers (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench import procfs
from bench.phases import Bench, Plan
from bench.processes import BenchFailure, Children, exit_on_termination
from bench.stack import missing_tools, open_stack
from bench.variants import BARE, VARIANT_ENVIRONMENT, Transport

SAMPLE_RATE_HZ = 250
# Threads that never run a request: a stack with one of these frames is theirs, whatever it calls.
BACKGROUND: tuple[tuple[str, str], ...] = (
    ("telemetry export (SDK batch threads, exporters)", "/opentelemetry/sdk/_shared_internal/"),
    ("telemetry export (SDK batch threads, exporters)", "/opentelemetry/exporter/"),
    ("telemetry export (SDK batch threads, exporters)", "PeriodicExportingMetricReader"),
    ("system metrics (psutil)", "/psutil/"),
)
# Every other stack belongs to the part of its innermost frame that has one; within a frame, the first
# marker (a substring of `function (file:line)`) that matches wins, so specific markers come first.
PARTS: tuple[tuple[str, str], ...] = (
    ("contrib gRPC server instrumentation", "/opentelemetry/instrumentation/grpc/"),
    ("platform Flask instrumentation", "/app/telemetry/flask_instrumentation"),
    ("platform gRPC server instrumentation", "/app/telemetry/grpc_instrumentation"),
    ("contrib Flask/WSGI instrumentation", "/opentelemetry/instrumentation/"),
    ("SDK tracing (spans, sampling)", "/opentelemetry/sdk/trace/"),
    ("SDK metrics (record, exemplars)", "/opentelemetry/sdk/metrics/"),
    ("OpenTelemetry API, context, propagation", "/opentelemetry/"),
    ("logging (JSON access line, handlers)", "/logging/"),
    ("logging (JSON access line, handlers)", "/app/telemetry/logging"),
    ("app telemetry (other)", "/app/telemetry/"),
    ("domain (auth, rate limit, items)", "/app/domain/"),
    ("Redis client", "/redis/"),
    ("gRPC adapter (interceptor, servicer)", "/app/rpc/"),
    ("HTTP adapter", "/app/http/"),
    ("gRPC (grpc.aio, C core)", "/grpc/"),
    ("asyncio event loop", "/asyncio/"),
    ("Flask/Werkzeug", "/werkzeug/"),
    ("Flask/Werkzeug", "/flask/"),
    ("gunicorn (accept, parse, write)", "/gunicorn/"),
)
OTHER = "other (stdlib, runtime)"
ORDER = (*dict.fromkeys(part for part, _ in (*BACKGROUND, *PARTS)), OTHER)


def parse_collapsed(text: str) -> Iterable[tuple[list[str], int]]:
    """py-spy's `--format raw`: one `frame;frame;...;frame count` line per distinct stack, outermost first."""
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def part_of(frames: list[str]) -> str:
    for part, marker in BACKGROUND:
        if any(marker in frame for frame in frames):
            return part
    for frame in reversed(frames):
        for part, marker in PARTS:
            if marker in frame:
                return part
    return OTHER


def shares(stacks: Iterable[tuple[list[str], int]]) -> tuple[Counter[str], int]:
    """Samples per part (each stack in exactly one), and all samples."""
    per_part: Counter[str] = Counter()
    for frames, count in stacks:
        per_part[part_of(frames)] += count
    return per_part, sum(per_part.values())


def report(per_part: Counter[str], total: int, cpu_us_per_request: float, header: str) -> str:
    columns = "| part (innermost frame) | share of GIL samples | worker CPU per request |"
    lines = [header, "", columns, "|---|---|---|"]
    for part in ORDER:
        share = per_part[part] / total if total else 0.0
        if share >= 0.005:
            lines.append(f"| {part} | {share:.1%} | {share * cpu_us_per_request:,.0f} us |")
    lines.append(f"| all samples ({total:,}) | 100% | {cpu_us_per_request:,.0f} us |")
    return "\n".join(lines)


def profile(variant: str, transport: Transport, seconds: float, raw_dir: Path | None) -> str:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        raise BenchFailure("py-spy not found (pip install py-spy)")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    plan = Plan((variant,), (transport,), seconds, 2.0, 1, 32, 0)
    with tempfile.TemporaryDirectory(prefix="platform-profile-") as tmp, Children() as children:
        workdir = Path(tmp)
        bench = Bench(plan, open_stack(children, workdir), children)
        with bench.serving(variant) as instance:
            warm = instance.warm_up(transport, plan.warmup_s)
            workers = instance.server.workers()
            outputs = [workdir / f"worker-{pid}.txt" for pid in workers]
            spies = [
                subprocess.Popen(
                    [
                        *(py_spy, "record", "--gil", "--full-filenames", "--format", "raw"),
                        *("--rate", str(SAMPLE_RATE_HZ), "--duration", str(round(seconds))),
                        *("--pid", str(pid), "--output", str(out)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid, out in zip(workers, outputs, strict=True)
            ]
            cpu_before = sum(procfs.cpu_seconds(pid) for pid in workers)
            run = instance.full_speed(transport, seconds, warm.rate)
            cpu = sum(procfs.cpu_seconds(pid) for pid in workers) - cpu_before
            for spy in spies:
                spy.wait(timeout=seconds + 30)
            text = "\n".join(out.read_text() for out in outputs if out.exists())
            if raw_dir is not None:
                raw_dir.mkdir(parents=True, exist_ok=True)
                (raw_dir / f"{variant}-{transport}.collapsed").write_text(text)
    per_part, total = shares(parse_collapsed(text))
    if total == 0:
        raise BenchFailure("py-spy recorded no sample (can it trace the workers? run as root)")
    cpu_us = cpu / run.load.requests * 1e6
    header = (
        f"`{variant}` {transport}: {run.rate:,.0f} req/s, {cpu_us:,.0f} us worker CPU per request "
        f"(py-spy --gil at {SAMPLE_RATE_HZ} Hz, which slows the workers)"
    )
    return report(per_part, total, cpu_us, header)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(set(VARIANT_ENVIRONMENT) - {BARE}))
    parser.add_argument("transport", choices=("http", "grpc"))
    parser.add_argument("--seconds", type=float, default=15.0, help="the profiled run (default 15)")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks in this directory")
    args = parser.parse_args(argv)
    if missing := missing_tools():
        print(f"bench.profile: {', '.join(missing)} not found on PATH", file=sys.stderr)
        return 2
    exit_on_termination()
    try:
        print(profile(args.variant, args.transport, args.seconds, args.raw))
    except BenchFailure as failure:
        print(f"bench.profile: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
