"""Background jobs dashboard: throughput by outcome, queue depth and oldest age, retries and dead letters,
attempt duration with exemplars to each attempt's trace."""

from __future__ import annotations

from .panels import Layout, dashboard, instance_var, stat, timeseries, variable_query
from .queries import JOB, RI, SEL, Json, prom, quantiles

PROCESSED = "platform_jobs_processed_total"
DEPTH = "platform_jobs_queue_depth"


def build() -> Json:
    lay = Layout()

    lay.row("Queue")
    lay.add(
        stat(
            "Oldest unacknowledged job",
            [prom(f"max(platform_jobs_oldest_age_seconds{{{JOB}}})", "oldest")],
            unit="s",
            description="Age of the oldest job delivery not yet acknowledged: the queue's lag. "
            "PlatformJobsBacklog fires past 5 minutes.",
            steps=((None, "green"), (60, "yellow"), (300, "red")),
        ),
        6,
        6,
    )
    lay.add(
        stat(
            "Dead letters",
            [prom(f'max({DEPTH}{{{JOB}, state="dead"}})', "dead")],
            description="Jobs out of attempts, waiting for a replay (POST /admin/jobs/replay).",
            steps=((None, "green"), (1, "red")),
        ),
        6,
        6,
    )
    lay.add(
        timeseries(
            "Jobs by state",
            [prom(f"max by (state) ({DEPTH}{{{JOB}}})", "{{state}}")],
            description="queued: waiting for a consumer; pending: delivered, not yet acknowledged; "
            "retrying: waiting for its backoff; dead: in the dead letters.",
            stack=True,
        ),
        12,
        6,
    )

    lay.row("Consumers")
    lay.add(
        timeseries(
            "Attempts by outcome",
            [prom(f"sum by (outcome) (rate({PROCESSED}{{{SEL}}}[{RI}]))", "{{outcome}}")],
            unit="ops",
            stack=True,
            description="succeeded; retried (failed, another attempt scheduled); dead (out of attempts); "
            "stale (a reclaimed job's late attempt, refused); duplicate (a finished job delivered again).",
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Attempt duration",
            quantiles("messaging_process_duration_seconds", SEL, "", ""),
            unit="s",
            description="The p99 points carry exemplars: click one to open that attempt's trace, from the "
            "submitting request through every attempt.",
        ),
        12,
        7,
    )
    lay.add(
        timeseries(
            "Jobs submitted and taken",
            [
                prom(f"sum(rate(messaging_client_sent_messages_total[{RI}]))", "submitted (API)", ref="A"),
                prom(f"sum(rate(messaging_client_consumed_messages_total{{{SEL}}}[{RI}]))", "taken", ref="B"),
            ],
            unit="ops",
        ),
        12,
        6,
    )
    lay.add(
        timeseries(
            "Retries and dead letters by kind",
            [
                prom(
                    "sum by (platform_job_kind, outcome) "
                    f'(increase({PROCESSED}{{{SEL}, outcome=~"retried|dead"}}[{RI}]))',
                    "{{platform_job_kind}} {{outcome}}",
                )
            ],
            bars=True,
        ),
        12,
        6,
    )

    return dashboard(
        "platform-jobs",
        "Platform / Background jobs",
        "The job queue on Redis Streams and its consumers (python -m app jobs).",
        lay,
        [
            variable_query(
                "job", "service (job)", f"label_values({PROCESSED}, job)", default="platform/platform-jobs"
            ),
            instance_var(PROCESSED),
        ],
    )
