"""The job consumer of one `python -m app jobs` worker process.

`concurrency` threads each take one delivery at a time from the stream (app.domain.jobs) and run it; a
keeper thread renews the visibility of the attempts in hand, so that a long job is not reclaimed while its
consumer lives. Each attempt is a CONSUMER span named `process <stream>` (OpenTelemetry messaging
conventions), a child of the submit's span whose context came in the message, and linked to it as well.

Shutdown: `begin_shutdown` stops taking deliveries; `stop` waits for the attempts in hand within its
budget. One still running after that stays pending in Redis: another consumer reclaims it once the
visibility timeout has passed, and this one's fencing token is stale by then.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.domain.chaos import ChaosControl
from app.domain.errors import DependencyUnavailable, InvalidArgument, PayloadTooLarge
from app.domain.job_service import CONSUMER_ATTRIBUTES, JobService
from app.domain.jobs import STREAM, Attempt, Delivery, JobStatus, QueueDepth
from app.telemetry.buckets import DURATION_BUCKETS_S
from app.telemetry.gauges import Reading, shared_gauge

log = logging.getLogger(__name__)

OUTCOMES = ("succeeded", "retried", "dead", "stale", "duplicate")
NOT_WORTH_RETRYING = (InvalidArgument, PayloadTooLarge)  # the same parameters would fail again
REDIS_RETRY_S = 1.0
DEPTH_REFRESH_S = 1.0
# Every delivery's metric attributes, built once (the consumer's per-message path).
PROCESS_ATTRIBUTES = {**CONSUMER_ATTRIBUTES, "messaging.operation.name": "process"}

_tracer = trace.get_tracer(__name__)


def consumer_name() -> str:
    """This process's consumer name: unique per host and process, so a replaced worker is a new consumer."""
    return f"{socket.gethostname()}-{os.getpid()}"


class JobConsumer:
    def __init__(
        self,
        jobs: JobService,
        chaos: ChaosControl | None,
        *,
        concurrency: int,
        name: str | None = None,
        block_s: float = 0.25,
    ) -> None:
        self._jobs = jobs
        self._queue = jobs.queue
        self._chaos = chaos
        self.name = name or consumer_name()
        self._concurrency = concurrency
        self._block_s = block_s
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._in_hand: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._group_ready = False
        self._redis_down = False
        self._depth_read: tuple[float, QueueDepth] | None = None

        meter = metrics.get_meter(__name__)
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Job deliveries taken"
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of job attempts",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._processed = meter.create_counter(
            "platform.jobs.processed", unit="{attempt}", description="Job attempts, by outcome"
        )
        self._consumed.add(0, PROCESS_ATTRIBUTES)
        for kind in jobs.kinds.kinds:
            for outcome in OUTCOMES:
                self._processed.add(0, {"platform.job.kind": kind, "outcome": outcome})
        self._unregister = [
            shared_gauge(
                __name__,
                "platform.jobs.queue.depth",
                unit="{job}",
                description="Jobs by state",
                combine="max",
            ).add(self._depth_readings),
            shared_gauge(
                __name__,
                "platform.jobs.oldest_age",
                unit="s",
                description="Age of the oldest unacknowledged job delivery",
                combine="max",
            ).add(self._age_readings),
        ]

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._stopping.is_set() and all(t.is_alive() for t in self._threads)

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._consume, name=f"job-consumer-{i}", daemon=True)
            for i in range(self._concurrency)
        ]
        self._threads.append(threading.Thread(target=self._keep_visible, name="job-keeper", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("job consumer started", extra={"consumer": self.name, "concurrency": self._concurrency})

    def begin_shutdown(self) -> None:
        self._stopping.set()

    def stop(self, timeout_s: float) -> None:
        """Take nothing new; wait up to `timeout_s` for the attempts in hand (the rest will be reclaimed)."""
        self.begin_shutdown()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = [a.job.id for a in self._in_hand.values()]
        if left:
            log.warning("jobs left to be reclaimed", extra={"jobs": left})
        for unregister in self._unregister:
            unregister()

    # -- consuming -----------------------------------------------------------------------------------

    def _consume(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._group_ready:
                    self._queue.ensure_group()
                    self._group_ready = True
                deliveries = self._queue.fetch(self.name, count=1, block_s=self._block_s)
                self._redis_back()
            except DependencyUnavailable:
                self._redis_lost()
                self._stopping.wait(REDIS_RETRY_S)
                continue
            except Exception:  # a bug or a Redis reply we did not expect: told, and the thread lives on
                log.exception("job consumer: fetching failed")
                self._stopping.wait(REDIS_RETRY_S)
                continue
            for delivery in deliveries:
                try:
                    self._process(delivery)
                except Exception:  # left pending: another attempt will take it after the visibility timeout
                    log.exception(
                        "job consumer: a delivery failed unexpectedly", extra={"job": delivery.job_id}
                    )

    def _process(self, delivery: Delivery) -> None:
        self._consumed.add(1, PROCESS_ATTRIBUTES)
        submitted = propagate.extract(delivery.carrier)
        links = [Link(trace.get_current_span(submitted).get_span_context())]
        attributes: dict[str, AttributeValue] = {
            **PROCESS_ATTRIBUTES,
            "messaging.operation.type": "process",
            "messaging.client.id": self.name,
            "messaging.message.id": delivery.job_id,
            "platform.job.reclaimed": delivery.reclaimed,
        }
        with _tracer.start_as_current_span(
            f"process {STREAM}", context=submitted, kind=SpanKind.CONSUMER, links=links, attributes=attributes
        ) as span:
            started = time.perf_counter()
            error_type: str | None = None
            try:
                attempt = self._queue.begin(delivery, self.name)
                if attempt is None:
                    span.set_attribute("platform.job.duplicate", True)
                    self._count("unknown", "duplicate")
                    return
                span.set_attribute("platform.job.kind", attempt.job.kind)
                span.set_attribute("platform.job.attempt", attempt.number)
                error_type = self._run(attempt, span)
            except DependencyUnavailable as err:
                # Redis went away around the attempt: it stays pending and is reclaimed later.
                error_type = type(err).__name__
                span.set_status(Status(StatusCode.ERROR, "the job queue is unavailable"))
                log.warning(
                    "job attempt left to be reclaimed: Redis unavailable", extra={"job": delivery.job_id}
                )
            finally:
                attributes_of_duration = (
                    PROCESS_ATTRIBUTES
                    if error_type is None
                    else {**PROCESS_ATTRIBUTES, "error.type": error_type}
                )
                self._duration.record(time.perf_counter() - started, attributes_of_duration)

    def _run(self, attempt: Attempt, span: trace.Span) -> str | None:
        """The attempt's work and its outcome; returns the error type, if it failed."""
        job = attempt.job
        with self._lock:
            self._in_hand[attempt.delivery.entry_id] = attempt
        try:
            if self._chaos is not None:
                self._chaos.maybe_fail_job()
            result = self._jobs.kinds.run(job.kind, job.params, attempt.fence)
        except Exception as err:  # any failure of the work is the job's, retried or dead-lettered
            span.record_exception(err)
            span.set_status(Status(StatusCode.ERROR, type(err).__name__))
            detail = getattr(err, "detail", None) or str(err) or type(err).__name__
            outcome = self._queue.fail(attempt, detail, retryable=not isinstance(err, NOT_WORTH_RETRYING))
            self._finished(
                attempt, outcome.status, outcome.stale, retry_in_s=outcome.retry_in_s, error=detail
            )
            return type(err).__name__
        finally:
            with self._lock:
                self._in_hand.pop(attempt.delivery.entry_id, None)
        outcome = self._queue.succeed(attempt, result)
        self._finished(attempt, outcome.status, outcome.stale)
        return None

    def _finished(
        self,
        attempt: Attempt,
        status: JobStatus | None,
        stale: bool,
        *,
        retry_in_s: float | None = None,
        error: str | None = None,
    ) -> None:
        outcome = (
            "stale"
            if stale
            else {JobStatus.FAILED: "retried", JobStatus.DEAD: "dead"}.get(
                status or JobStatus.SUCCEEDED, "succeeded"
            )
        )
        self._count(attempt.job.kind, outcome)
        fields = {
            "job": attempt.job.id,
            "kind": attempt.job.kind,
            "attempt": attempt.number,
            "outcome": outcome,
        }
        if stale:
            log.warning(
                "job attempt finished after another took it over; its result was refused", extra=fields
            )
        elif outcome == "succeeded":
            log.info("job succeeded", extra=fields)
        elif outcome == "retried":
            log.warning(
                "job attempt failed, retrying", extra={**fields, "error": error, "retry_in_s": retry_in_s}
            )
        else:
            log.error("job dead-lettered", extra={**fields, "error": error})

    def _count(self, kind: str, outcome: str) -> None:
        self._processed.add(1, {"platform.job.kind": kind, "outcome": outcome})

    def _keep_visible(self) -> None:
        """Every third of the visibility timeout, claim the attempts in hand afresh; ends once stopped and
        empty-handed."""
        interval = self._queue.visibility_timeout_s / 3
        while True:
            stopped = self._stopping.wait(interval)
            with self._lock:
                attempts = list(self._in_hand.values())
            if stopped and not attempts:
                return
            for attempt in attempts:
                try:
                    self._queue.keep(attempt, self.name)
                except DependencyUnavailable:
                    break

    # -- Redis outages, told once each ---------------------------------------------------------------

    def _redis_lost(self) -> None:
        if not self._redis_down:
            self._redis_down = True
            log.warning("job queue unavailable (Redis); retrying every %.0f s", REDIS_RETRY_S)

    def _redis_back(self) -> None:
        if self._redis_down:
            self._redis_down = False
            log.info("job queue available again")

    # -- gauges --------------------------------------------------------------------------------------

    def _depth(self) -> QueueDepth | None:
        """The queue's depth, read at most once a second (both gauges read it at each collection)."""
        now = time.monotonic()
        with self._lock:
            if self._depth_read is not None and now - self._depth_read[0] < DEPTH_REFRESH_S:
                return self._depth_read[1]
        try:
            depth = self._queue.depth()
        except DependencyUnavailable:
            return None
        with self._lock:
            self._depth_read = (now, depth)
        return depth

    def _depth_readings(self) -> Iterable[Reading]:
        depth = self._depth()
        if depth is None:
            return []
        return [
            (depth.queued, {"state": "queued"}),
            (depth.pending, {"state": "pending"}),
            (depth.retrying, {"state": "retrying"}),
            (depth.dead, {"state": "dead"}),
        ]

    def _age_readings(self) -> Iterable[Reading]:
        depth = self._depth()
        return [] if depth is None else [(depth.oldest_age_s, {})]
