"""Runtime and saturation dashboard: per-worker event-loop lag, GIL wake-up delay, CPU, memory, GC, pool."""

from __future__ import annotations

from .panels import Layout, dashboard, instance_var, job_var, stat, table, timeseries
from .queries import JOB, RI, SEL, Json, or_zero, prom

LAG_THRESHOLD_S = 0.1  # PlatformEventLoopLag threshold


def build() -> Json:
    lay = Layout()
    lag = "platform_eventloop_delay_seconds"
    wake = "platform_thread_wakeup_delay_seconds"
    pool = "platform_pool_task_duration_seconds"

    lay.row("Workers")
    lay.add(
        stat(
            "Workers alive",
            [prom(f"sum by (job) (platform_workers{{{JOB}}})", "{{job}}")],
            steps=((None, "red"), (1, "green")),
            description="Live gunicorn workers. On the OTLP path a dead worker's 1 lingers up to 5 "
            "minutes (no staleness for pushed series).",
        ),
        4,
        5,
    )
    lay.add(
        table(
            "Build",
            [
                prom(
                    f"max by (job, version, commit) (platform_build_info{{{JOB}}})", instant=True, fmt="table"
                )
            ],
            transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
        ),
        8,
        5,
    )
    lay.add(
        timeseries(
            "Active HTTP requests per worker",
            [prom(f"sum by (instance) (http_server_active_requests{{{SEL}}})", "{{instance}}")],
        ),
        12,
        5,
    )

    lay.row("Event loop and GIL")
    lay.add(
        timeseries(
            "gRPC event-loop lag p99 per worker",
            [
                prom(
                    "histogram_quantile(0.99, sum by (instance, loop, le) "
                    f"(rate({lag}_bucket{{{SEL}}}[{RI}])))",
                    "{{instance}} {{loop}}",
                )
            ],
            unit="s",
            threshold_line=LAG_THRESHOLD_S,
            description=(
                "How late the gRPC loop runs a scheduled callback. PlatformEventLoopLag fires over 100 ms."
            ),
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Thread wake-up delay p99 per worker",
            [
                prom(
                    f"histogram_quantile(0.99, sum by (instance, le) (rate({wake}_bucket{{{SEL}}}[{RI}])))",
                    "{{instance}}",
                )
            ],
            unit="s",
            description="How late a sleeping sampler thread wakes: GIL contention and CPU starvation.",
        ),
        12,
        8,
    )

    lay.row("Process")
    lay.add(
        timeseries(
            "CPU per worker",
            [
                prom(
                    f"sum by (instance, type) (rate(process_cpu_time_seconds_total{{{SEL}}}[{RI}]))",
                    "{{instance}} {{type}}",
                )
            ],
            unit="percentunit",
            stack=True,
            description="CPU seconds per second (1.0 = one core).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Memory (RSS) per worker",
            [prom(f"sum by (instance) (process_memory_usage_bytes{{{SEL}}})", "{{instance}}")],
            unit="bytes",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Threads per worker", [prom(f"sum by (instance) (process_thread_count{{{SEL}}})", "{{instance}}")]
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "GC collections by generation",
            [
                prom(
                    f"sum by (cpython_gc_generation) (rate(cpython_gc_collections_total{{{SEL}}}[{RI}]))",
                    "gen {{cpython_gc_generation}}",
                )
            ],
            unit="ops",
            stack=True,
        ),
        8,
        8,
    )

    lay.row("Worker pool (CPU-bound work)")
    lay.add(
        timeseries(
            "Pool queue and active tasks",
            [
                prom(f"sum by (job) (platform_pool_queued{{{SEL}}})", "queued", ref="A"),
                prom(f"sum by (job) (platform_pool_active{{{SEL}}})", "active", ref="B"),
            ],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool rejections (queue full)",
            [
                prom(
                    or_zero(
                        f"sum by (task) (rate(platform_pool_rejections_total{{{SEL}}}[{RI}]))",
                        f"sum by (task) (rate({pool}_count{{{SEL}}}[{RI}]))",
                    ),
                    "{{task}}",
                )
            ],
            unit="reqps",
            description="Tasks refused because the queue was full (503 Overloaded / UNAVAILABLE).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool tasks by outcome",
            [prom(f"sum by (task, outcome) (rate({pool}_count{{{SEL}}}[{RI}]))", "{{task}} {{outcome}}")],
            unit="ops",
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pool task duration p99 by task",
            [
                prom(
                    f"histogram_quantile(0.99, sum by (task, le) (rate({pool}_bucket{{{SEL}}}[{RI}])))",
                    "{{task}}",
                    exemplar=True,
                )
            ],
            unit="s",
        ),
        8,
        8,
    )

    return dashboard(
        "platform-runtime",
        "Platform / Runtime and saturation",
        "Per-worker event-loop lag, GIL wake-up delay, CPU, memory, GC, the worker pool.",
        lay,
        [job_var("platform_build_info"), instance_var("platform_build_info")],
    )
