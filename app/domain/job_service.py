"""Jobs as the API offers them: submit (checked, traced as a message sent), status, dead-letter replay.

The submit's span is a PRODUCER span by the OpenTelemetry messaging conventions, and its context travels in
the message (W3C trace context in the stream entry), so that the consumer's `process` spans of every
attempt join the submitting request's trace (app.runtime.job_consumer).
"""

from __future__ import annotations

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind

from app.domain.errors import DomainError
from app.domain.job_kinds import JobKinds
from app.domain.jobs import GROUP, STREAM, Job, JobQueue, check_idempotency_key
from app.domain.models import JSON

MESSAGING_SYSTEM = "redis"  # Redis Streams; not one of semconv's well-known values, which allow others
BASE_ATTRIBUTES = {"messaging.system": MESSAGING_SYSTEM, "messaging.destination.name": STREAM}
SENT_ATTRIBUTES = {**BASE_ATTRIBUTES, "messaging.operation.name": "send"}
CONSUMER_ATTRIBUTES = {**BASE_ATTRIBUTES, "messaging.consumer.group.name": GROUP}

_tracer = trace.get_tracer(__name__)


class JobService:
    def __init__(self, queue: JobQueue, kinds: JobKinds) -> None:
        self.queue = queue
        self.kinds = kinds
        self._sent = metrics.get_meter(__name__).create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Jobs submitted to the queue"
        )
        self._sent.add(0, SENT_ATTRIBUTES)

    def submit(self, kind: str, params: JSON, *, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a job (or, for a key seen in the last day, return that key's job and False)."""
        check_idempotency_key(idempotency_key)
        self.kinds.check(kind, params)
        attributes = {**SENT_ATTRIBUTES, "messaging.operation.type": "send", "platform.job.kind": kind}
        with _tracer.start_as_current_span(
            f"send {STREAM}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            try:
                job, created = self.queue.submit(
                    kind, params, idempotency_key=idempotency_key, carrier=carrier
                )
            except DomainError as err:
                self._sent.add(1, {**SENT_ATTRIBUTES, "error.type": type(err).__name__})
                raise
            span.set_attribute("messaging.message.id", job.id)
            span.set_attribute("platform.job.created", created)
            if created:
                self._sent.add(1, SENT_ATTRIBUTES)
            return job, created

    def get(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def replay_dead(self, limit: int = 100) -> list[str]:
        return self.queue.replay_dead(limit)
