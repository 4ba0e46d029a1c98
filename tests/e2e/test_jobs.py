"""`python -m app jobs` as deployed: 2 gunicorn worker processes consuming the queue on a real redis-server.

Jobs are submitted from the test through the domain's own queue (the producer side the API uses), or by a
client over HTTP and gRPC to the real API deployment; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from google.protobuf import json_format, struct_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from app.domain.chaos import CHAOS_KEY
from app.domain.items import ITEM_PREFIX
from app.domain.jobs import Job, JobQueue, JobStatus
from app.rpc.interceptors import SERVICE_NAME
from app.rpc.platform.v1 import platform_pb2 as pb
from app.worker import API, JOBS
from tests.conftest import PrivateRedis, wait_until
from tests.e2e.conftest import Proc, base_env, mint, start_api, start_jobs, start_upstream
from tests.e2e.otlp_receiver import OtlpReceiver

CONSUMER = SpanProto.SPAN_KIND_CONSUMER


pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3  # start_jobs's JOBS_MAX_ATTEMPTS


def consumer_pid(job: Job) -> int:
    assert job.consumer is not None
    return int(job.consumer.rsplit("-", 1)[1])


def wait_status(queue: JobQueue, job_id: str, status: JobStatus, proc: Proc, timeout: float = 30) -> Job:
    def reached() -> Job | None:
        proc.check_alive()
        job = queue.get(job_id)
        return job if job.status is status else None

    found: Job = wait_until(
        reached, timeout=timeout, message=lambda: f"job {job_id} {status}\n{proc.log.text()}"
    )
    return found


@pytest.fixture
def redis_env(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[tuple[redis.Redis, dict[str, str]]]:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
    yield client, base_env(private_redis.url, tmp_path)
    client.close()


def test_jobs_succeed_and_failing_ones_retry_then_dead_letter_then_replay(
    redis_env: tuple[redis.Redis, dict[str, str]], tmp_path: Path
) -> None:
    client, env = redis_env
    queue = JobQueue(client)
    # A newer writer has already written this item: every import attempt's token is stale, and fails.
    client.hset(f"{ITEM_PREFIX}blocked", mapping={"value": "0", "version": 1, "fence": 10**12})
    jobs = start_jobs(env, tmp_path)
    try:
        done = [queue.submit("primes", {"limits": [10 * (i + 1)]})[0] for i in range(10)]
        blocked, _ = queue.submit("import", {"items": {"blocked": "new"}})
        for job in done:
            finished = wait_status(queue, job.id, JobStatus.SUCCEEDED, jobs)
            assert finished.attempts == 1 and finished.result is not None
            assert consumer_pid(finished) in jobs.worker_pids()

        dead = wait_status(queue, blocked.id, JobStatus.DEAD, jobs)
        assert dead.attempts == MAX_ATTEMPTS and dead.error is not None and "stale" in dead.error
        assert queue.depth().dead == 1

        client.hdel(f"{ITEM_PREFIX}blocked", "fence")  # the operator fixes the cause, then replays
        assert queue.replay_dead() == [blocked.id]
        replayed = wait_status(queue, blocked.id, JobStatus.SUCCEEDED, jobs)
        assert replayed.attempts == 1 and replayed.result == {"imported": 1}
        assert json.loads(client.hget(f"{ITEM_PREFIX}blocked", "value") or b"null") == "new"  # type: ignore[arg-type]
        text = jobs.request("GET", "/metrics").body.decode()
        assert 'outcome="retried"' in text and 'outcome="dead"' in text
        assert "platform_jobs_queue_depth" in text, text
    finally:
        jobs.stop()


def test_a_killed_workers_job_is_reclaimed_and_completes_once(
    redis_env: tuple[redis.Redis, dict[str, str]], tmp_path: Path
) -> None:
    client, env = redis_env
    queue = JobQueue(client)
    jobs = start_jobs(env, tmp_path)
    try:
        # About a second of PBKDF2 per input: long enough to be killed in the middle.
        job, _ = queue.submit(
            "hash", {"inputs": [f"in-{i}" for i in range(4)], "params": {"iterations": 600_000}}
        )
        running = wait_status(queue, job.id, JobStatus.RUNNING, jobs)
        victim = consumer_pid(running)
        os.kill(victim, signal.SIGKILL)

        done = wait_status(queue, job.id, JobStatus.SUCCEEDED, jobs, timeout=60)
        assert done.attempts == 2 and consumer_pid(done) != victim
        assert len(done.result["hashes"]) == 4
        successes = [
            r for r in jobs.log.json_records() if r.get("job") == job.id and r["message"] == "job succeeded"
        ]
        assert len(successes) == 1
        wait_until(lambda: len(jobs.worker_pids()) == 2, timeout=30, message="the killed worker replaced")
    finally:
        jobs.stop()


def test_a_paused_worker_cannot_overwrite_what_its_successor_wrote(
    redis_env: tuple[redis.Redis, dict[str, str]], tmp_path: Path
) -> None:
    client, env = redis_env
    queue = JobQueue(client)
    # Every attempt waits 3 s before its work (set before the workers start, so each reads it first).
    client.set(CHAOS_KEY, json.dumps(_chaos(job_delay_ms=3000)), ex=120)
    jobs = start_jobs(env, tmp_path)
    try:
        job, _ = queue.submit("import", {"items": {"fenced": "value"}})
        first = wait_status(queue, job.id, JobStatus.RUNNING, jobs)
        paused = consumer_pid(first)
        os.kill(paused, signal.SIGSTOP)  # past its lease: the other worker reclaims the job
        try:
            done = wait_status(queue, job.id, JobStatus.SUCCEEDED, jobs, timeout=60)
            assert done.attempts == 2 and consumer_pid(done) != paused
            successor_fence = int(client.hget(f"{ITEM_PREFIX}fenced", "fence") or 0)  # type: ignore[arg-type]
        finally:
            os.kill(paused, signal.SIGCONT)
        mark = 0

        def refused() -> bool:
            jobs.check_alive()
            return any(
                r.get("job") == job.id and r.get("outcome") == "stale" for r in jobs.log.json_records()[mark:]
            )

        wait_until(
            refused, timeout=30, message=lambda: f"the resumed worker's write refused\n{jobs.log.text()}"
        )
        assert int(client.hget(f"{ITEM_PREFIX}fenced", "fence") or 0) == successor_fence  # type: ignore[arg-type]
        assert int(client.hget(f"{ITEM_PREFIX}fenced", "version") or 0) == 1  # type: ignore[arg-type]
        assert queue.get(job.id).status is JobStatus.SUCCEEDED
    finally:
        jobs.stop()


def test_sigterm_finishes_the_job_in_hand(
    redis_env: tuple[redis.Redis, dict[str, str]], tmp_path: Path
) -> None:
    client, env = redis_env
    queue = JobQueue(client)
    jobs = start_jobs(env, tmp_path, processes=1)
    job, _ = queue.submit("hash", {"inputs": ["a", "b"], "params": {"iterations": 600_000}})
    wait_status(queue, job.id, JobStatus.RUNNING, jobs)
    assert jobs.stop() == 0
    assert queue.get(job.id).status is JobStatus.SUCCEEDED


def test_redis_down_then_back(private_redis: PrivateRedis, tmp_path: Path) -> None:
    env = base_env(private_redis.url, tmp_path)
    jobs = start_jobs(env, tmp_path)
    try:
        private_redis.stop()
        wait_until(lambda: jobs.request("GET", "/readyz").status == 503, timeout=10, message="readiness 503")
        private_redis.start()  # empty: Redis kept nothing, the consumers make their group again
        client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            queue = JobQueue(client)
            job, _ = queue.submit("primes", {"limits": [100]})
            assert wait_status(queue, job.id, JobStatus.SUCCEEDED, jobs).result == {"counts": [25]}
        finally:
            client.close()
        warnings = [r for r in jobs.log.json_records() if r["message"].startswith("job queue unavailable")]
        assert 1 <= len(warnings) <= 2  # once per worker per outage
    finally:
        jobs.stop()


def _chaos(**faults: float) -> dict[str, float]:
    state = {"redis_error_rate": 0.0, "loop_block_ms": 0, "gil_block_ms": 0, "expires_at": time.time() + 120}
    return {**state, **faults}


def test_jobs_submitted_over_http_and_grpc_succeed_each_in_one_trace(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """The API deployment takes the submits, the jobs deployment runs them: a client sees them succeed, and
    the collector sees one trace per job across the two deployments."""
    receiver = OtlpReceiver().start()
    env = base_env(
        private_redis.url,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    jobs = start_jobs(env, tmp_path)
    try:
        token = mint(env, "jobs-e2e")
        key = f"e2e-{uuid.uuid4().hex[:8]}"
        body = {"kind": "primes", "params": {"limits": [1000, 2000]}, "idempotency_key": key}
        submitted = api.request("POST", "/v1/jobs", body, token=token)
        assert submitted.status == 202, submitted.body
        over_http = submitted.json()["id"]
        assert submitted.headers["location"] == f"/v1/jobs/{over_http}"
        again = api.request("POST", "/v1/jobs", {**body, "params": {"limits": [10]}}, token=token)
        assert (again.status, again.json()["id"]) == (200, over_http)  # the key's first job, not a new one

        params = struct_pb2.Struct()
        params.update({"items": {f"{key}-a": {"n": 1}, f"{key}-b": {"n": 2}}})
        created, _ = api.rpc("SubmitJob", pb.SubmitJobRequest(kind="import", params=params), token)
        assert created.created and created.status == "queued"
        over_grpc = created.id

        def http_done() -> dict[str, Any] | None:
            jobs.check_alive()
            job: dict[str, Any] = api.request("GET", f"/v1/jobs/{over_http}", token=token).json()
            return job if job["status"] == "succeeded" else None

        def grpc_done() -> pb.Job | None:
            jobs.check_alive()
            job, _ = api.rpc("GetJob", pb.GetJobRequest(id=over_grpc), token)
            return job if job.status == "succeeded" else None

        done = wait_until(http_done, timeout=30, message=lambda: f"job {over_http}\n{jobs.log.text()}")
        assert done["result"] == {"counts": [168, 303]} and done["attempts"] == 1
        imported = wait_until(grpc_done, timeout=30, message=lambda: f"job {over_grpc}\n{jobs.log.text()}")
        assert json_format.MessageToDict(imported.result) == {"imported": 2}
        item = api.request("GET", f"/v1/items/{key}-b", token=token)
        assert item.status == 200 and item.json()["value"] == {"n": 2}

        def trace_of(job_id: str) -> dict[str, set[str]] | None:
            """Span names by service in the trace of the job's consumer span, once its submit is there."""
            spans = list(receiver.received.spans)
            process = [
                s for s in spans if s.attributes.get("messaging.message.id") == job_id and s.kind == CONSUMER
            ]
            if not process:
                return None
            names: dict[str, set[str]] = {}
            for s in spans:
                if s.trace_id == process[0].trace_id:
                    names.setdefault(s.resource["service.name"], set()).add(s.name)
            return names if len(names) == 2 else None

        for job_id, submit_span in ((over_http, "POST /v1/jobs"), (over_grpc, f"/{SERVICE_NAME}/SubmitJob")):
            names = wait_until(lambda j=job_id: trace_of(j), timeout=30, message=f"the trace of job {job_id}")
            api_spans, jobs_spans = names[API.service_name], names[JOBS.service_name]
            assert {submit_span, "send platform:jobs:stream"} <= api_spans, api_spans
            assert "process platform:jobs:stream" in jobs_spans, jobs_spans
    finally:
        jobs.stop()
        api.stop()
        upstream.stop()
        receiver.stop()
