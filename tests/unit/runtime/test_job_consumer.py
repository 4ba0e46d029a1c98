"""The job consumer on a real redis-server, its telemetry on in-memory exporters: one trace from the submit
through every attempt, with the messaging conventions' attributes, and every log line of an attempt
carrying that trace."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.domain.chaos import ChaosControl
from app.domain.compute import ComputeService
from app.domain.items import ItemStore
from app.domain.job_kinds import JobKinds
from app.domain.job_service import JobService
from app.domain.jobs import STREAM, Backoff, JobQueue, JobStatus
from app.runtime.job_consumer import JobConsumer
from app.runtime.pool import WorkerPool
from app.settings import Settings
from tests.conftest import wait_until
from tests.unit.conftest import Captured, Metrics


@dataclass
class Rig:
    jobs: JobService
    chaos: ChaosControl
    consumer: JobConsumer


@pytest.fixture
def rig(make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    pool = WorkerPool(1, 4, 10.0, preload=["app.domain.compute"])
    pool.start()
    queue = JobQueue(client, max_attempts=2, visibility_timeout_s=5, backoff=Backoff(0.01, 0.02))
    jobs = JobService(queue, JobKinds(ComputeService(pool), ItemStore(client, settings, None)))
    chaos = ChaosControl(client)
    consumer = JobConsumer(jobs, chaos, concurrency=2, name="test-consumer", block_s=0.05)
    consumer.start()
    yield Rig(jobs, chaos, consumer)
    consumer.stop(5)
    pool.close(wait=False, timeout=5)
    client.close()


def _finished(jobs: JobService, job_id: str, status: JobStatus) -> bool:
    return jobs.get(job_id).status is status


def _process_spans(spans: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    def found() -> list[ReadableSpan] | None:
        got = [s for s in spans.get_finished_spans() if s.name == f"process {STREAM}"]
        return got if len(got) >= count else None

    result: list[ReadableSpan] = wait_until(found, timeout=10, message=f"{count} process spans")
    return result


def test_one_trace_from_the_submit_through_every_attempt(
    rig: Rig, spans: InMemorySpanExporter, metric_values: Metrics, captured: Captured
) -> None:
    dead_before = metric_values.value("platform.jobs.processed", outcome="dead")
    rig.chaos.set({"job_failure_rate": 1})
    with trace.get_tracer("test").start_as_current_span("POST /v1/jobs") as request:
        job, created = rig.jobs.submit("primes", {"limits": [10]})
    assert created
    wait_until(lambda: _finished(rig.jobs, job.id, JobStatus.DEAD), timeout=10, message="dead-lettered")

    rig.chaos.set({"reset": True})
    assert rig.jobs.replay_dead() == [job.id]
    wait_until(lambda: _finished(rig.jobs, job.id, JobStatus.SUCCEEDED), timeout=10, message="succeeded")
    assert rig.jobs.get(job.id).result == {"counts": [4]}

    (send,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    trace_id = request.get_span_context().trace_id
    assert send.name == f"send {STREAM}"
    assert send.context is not None and send.context.trace_id == trace_id
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "redis"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.message.id"] == job.id

    attempts = sorted(_process_spans(spans, 3), key=lambda s: s.start_time or 0)
    assert [s.attributes and s.attributes["platform.job.attempt"] for s in attempts] == [1, 2, 1]
    for span in attempts:
        assert span.kind is SpanKind.CONSUMER
        assert span.context is not None and span.context.trace_id == trace_id  # one trace
        assert span.parent is not None and span.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in span.links] == [send.context.span_id]
        assert span.attributes is not None
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.consumer.group.name"] == "workers"
        assert span.attributes["messaging.message.id"] == job.id
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    # The domain work of the successful attempt is a child of its process span.
    pool_spans = [s for s in spans.get_finished_spans() if s.name == "pool.primes"]
    assert any(s.parent is not None and s.parent.span_id == attempts[2].context.span_id for s in pool_spans)

    assert metric_values.value("platform.jobs.processed", outcome="dead") == dead_before + 1
    job_lines = [line for line in captured.lines() if line.get("job") == job.id]
    assert {line["message"] for line in job_lines} >= {
        "job attempt failed, retrying",
        "job dead-lettered",
        "job succeeded",
    }
    assert all(line.get("trace_id") == format(trace_id, "032x") for line in job_lines)


def test_stop_finishes_the_job_in_hand(rig: Rig) -> None:
    rig.chaos.set({"job_delay_ms": 500})
    job, _ = rig.jobs.submit("primes", {"limits": [10]})
    wait_until(lambda: _finished(rig.jobs, job.id, JobStatus.RUNNING), timeout=10, message="running")
    started = time.monotonic()
    rig.consumer.stop(5)
    assert time.monotonic() - started < 5
    assert rig.jobs.get(job.id).status is JobStatus.SUCCEEDED
    assert not rig.consumer.running
    rig.chaos.set({"reset": True})
