"""HTTP throughput of one Flask endpoint under gunicorn (2 gthread workers), three ways, in one run.

    bare      no telemetry at all (the baseline)
    otel      the same app under plain `opentelemetry-instrument` (traces, metrics, logs over OTLP)
    shipped   the same app with the telemetry this project ships (app.telemetry: traces, metrics and
              logs over OTLP, the /metrics bridge, JSON access logs on stdout)
    shipped-without-{span,histogram,access-log}
              (optional) shipped with one part switched off: what that part costs

Both instrumented variants export to the same local OTLP receiver. wrk drives each variant in turn,
several rounds interleaved so that drift in the machine hits every variant alike; the report gives
the median req/s per variant and its ratio to the baseline.

    .venv/bin/python -m bench.throughput [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(variant: str, port: int, otlp: str, metrics_dir: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "BENCH_PORT": str(port),
            "APP_ENV": "dev",
            "PYTHONPATH": str(ROOT),
            "DEV_SECRETS_FILE": str(Path(metrics_dir) / "dev-secrets.json"),
        }
    )
    gunicorn = [str(BIN / "gunicorn"), "--chdir", str(ROOT)]
    if variant == "bare":
        cmd = [*gunicorn, "-c", "bench/gunicorn_bare.py", "bench.apps:bare()"]
    elif variant == "otel":
        env.update(
            {
                "OTEL_SERVICE_NAME": "bench-otel",
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_LOGS_EXPORTER": "otlp",
                "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
                "OTEL_SEMCONV_STABILITY_OPT_IN": "http",
            }
        )
        cmd = [
            str(BIN / "opentelemetry-instrument"),
            *gunicorn,
            "-c",
            "bench/gunicorn_bare.py",
            "bench.apps:bare()",
        ]
    else:
        env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})
        if variant.startswith("shipped-without-"):  # one part switched off, see bench/apps.py
            env["BENCH_WITHOUT"] = variant.removeprefix("shipped-without-")
        cmd = [*gunicorn, "-c", "bench/gunicorn_shipped.py", "bench.apps:shipped()"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello/warm", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{variant} did not start")


def wrk(port: int, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/hello/bench"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"errors during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def workers_cpu_s(master_pid: int) -> float:
    """CPU seconds (user + system) used so far by the gunicorn workers of `master_pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    total = 0
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", default="bare,otel,shipped")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput.md"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    sys.path.insert(0, str(ROOT))
    from tests.e2e.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {v: [] for v in variants}
    cpu_per_request: dict[str, list[float]] = {v: [] for v in variants}  # worker CPU, microseconds
    try:
        for _ in range(args.rounds):
            for variant in variants:
                with tempfile.TemporaryDirectory() as metrics_dir:
                    port = free_port()
                    proc = start(variant, port, receiver.endpoint, metrics_dir)
                    try:
                        wrk(port, 2, args.connections)  # warm-up: imports, JIT-free caches, connections
                        cpu_before = workers_cpu_s(proc.pid)
                        rate = wrk(port, args.seconds, args.connections)
                        cpu = workers_cpu_s(proc.pid) - cpu_before
                        results[variant].append(rate)
                        cpu_per_request[variant].append(cpu / (rate * args.seconds) * 1e6)
                    finally:
                        proc.terminate()
                        proc.wait(30)
                print(variant, results[variant][-1], flush=True)
    finally:
        receiver.stop()

    base = statistics.median(results["bare"]) if "bare" in results else None
    lines = [
        "# HTTP throughput: bare vs opentelemetry-instrument vs shipped telemetry",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {platform.platform()}.",
        f"Load: wrk -t2 -c{args.connections}, {args.seconds} s per run after a 2 s warm-up, "
        f"{args.rounds} interleaved rounds; gunicorn 2 gthread workers x 8 threads; wrk shares the 2 cores.",
        "",
        "Worker CPU per request: user + system time of the gunicorn workers during the run, per request.",
        "",
        "| variant | median req/s | runs | ratio to bare | worker CPU per request |",
        "|---|---|---|---|---|",
    ]
    for variant, runs in results.items():
        med = statistics.median(runs)
        ratio = f"{med / base:.2f}" if base else "-"
        cpu_us = statistics.median(cpu_per_request[variant])
        lines.append(
            f"| {variant} | {med:,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} | {ratio} | {cpu_us:.0f} us |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
