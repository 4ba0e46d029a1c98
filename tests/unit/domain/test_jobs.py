"""The job queue on a real redis-server: submit, deliver, retry, dead-letter, replay, reclaim, fence."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from app.domain.errors import DependencyUnavailable, InvalidArgument, NotFound, Overloaded
from app.domain.jobs import Attempt, Backoff, JobQueue, JobStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


QueueFactory = Callable[..., JobQueue]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_queue(redis_client: redis.Redis, clock: Clock) -> QueueFactory:
    def make(**kwargs: object) -> JobQueue:
        options: dict[str, object] = {"clock": clock, "backoff": Backoff(base_s=1.0, cap_s=8.0), **kwargs}
        queue = JobQueue(redis_client, **options)  # type: ignore[arg-type]
        queue.ensure_group()
        return queue

    return make


def _start_one(queue: JobQueue, consumer: str = "c1") -> Attempt:
    deliveries = queue.fetch(consumer, count=1, block_s=0.01)
    assert len(deliveries) == 1
    attempt = queue.begin(deliveries[0])
    assert attempt is not None
    return attempt


def test_a_submitted_job_is_delivered_once_and_succeeds(make_queue: QueueFactory) -> None:
    queue = make_queue()
    job, created = queue.submit("primes", {"limits": [10]}, carrier={"traceparent": "00-ab-cd-01"})
    assert created and job.status is JobStatus.QUEUED and job.attempts == 0
    assert queue.get(job.id) == job  # what submit answers is what it stored
    assert queue.depth().queued == 1

    attempt = _start_one(queue)
    assert attempt.job.id == job.id and attempt.number == 1
    assert attempt.delivery.carrier == {"traceparent": "00-ab-cd-01"}
    assert not attempt.delivery.reclaimed
    assert queue.get(job.id).status is JobStatus.RUNNING
    assert queue.depth().pending == 1

    assert queue.succeed(attempt, {"counts": [4]}).status is JobStatus.SUCCEEDED
    done = queue.get(job.id)
    assert (done.status, done.result, done.attempts) == (JobStatus.SUCCEEDED, {"counts": [4]}, 1)
    assert queue.fetch("c1", count=1, block_s=0.01) == []
    depth = queue.depth()
    assert (depth.queued, depth.pending, depth.oldest_age_s) == (0, 0, 0.0)


def test_an_idempotency_key_returns_the_first_job(make_queue: QueueFactory) -> None:
    queue = make_queue()
    first, created = queue.submit("primes", {"limits": [10]}, idempotency_key="order-7")
    again, created_again = queue.submit("primes", {"limits": [99]}, idempotency_key="order-7")
    assert created and not created_again
    assert again.id == first.id and again.params == {"limits": [10]}
    assert queue.depth().queued == 1
    with pytest.raises(InvalidArgument):
        queue.submit("primes", {}, idempotency_key="k" * 129)


def test_failures_retry_with_backoff_then_dead_letter_then_replay(
    make_queue: QueueFactory, clock: Clock
) -> None:
    queue = make_queue(max_attempts=3)
    job, _ = queue.submit("import", {"items": {}})
    for number in (1, 2):
        attempt = _start_one(queue)
        assert attempt.number == number
        outcome = queue.fail(attempt, f"boom {number}")
        assert outcome.status is JobStatus.FAILED
        assert outcome.retry_in_s is not None and 0 <= outcome.retry_in_s < 2.0**number
        assert queue.get(job.id).status is JobStatus.FAILED
        assert queue.fetch("c1", count=1, block_s=0.01) == []  # not due yet
        clock.now += 2.0**number  # due now
    attempt = _start_one(queue)
    assert queue.fail(attempt, "boom 3").status is JobStatus.DEAD
    dead = queue.get(job.id)
    assert (dead.status, dead.attempts, dead.error) == (JobStatus.DEAD, 3, "boom 3")
    assert queue.depth().dead == 1

    assert queue.replay_dead() == [job.id]
    assert queue.depth().dead == 0
    replayed = _start_one(queue)
    assert replayed.number == 1  # attempts start again
    assert queue.succeed(replayed, None).status is JobStatus.SUCCEEDED


def test_a_job_that_is_not_worth_retrying_goes_straight_to_the_dead_letters(make_queue: QueueFactory) -> None:
    queue = make_queue(max_attempts=5)
    queue.submit("hash", {"bad": True})
    assert queue.fail(_start_one(queue), "bad parameters", retryable=False).status is JobStatus.DEAD


def test_a_dead_consumers_job_is_reclaimed_and_its_stale_result_refused(
    make_queue: QueueFactory, redis_client: redis.Redis
) -> None:
    queue = make_queue(visibility_timeout_s=0.05)
    job, _ = queue.submit("import", {"items": {"a": 1}})
    paused = _start_one(queue, "paused")

    # The visibility timeout runs on Redis's clock: poll until the entry is idle long enough to claim.
    deliveries: list[object] = []
    for _ in range(200):
        deliveries = list(queue.fetch("alive", count=1, block_s=0.01))
        if deliveries:
            break
    assert len(deliveries) == 1
    taken = queue.begin(deliveries[0])  # type: ignore[arg-type]
    assert taken is not None and taken.delivery.reclaimed and taken.number == 2
    assert taken.fence > paused.fence

    assert queue.succeed(paused, "late").stale  # the paused consumer wakes up: refused
    assert queue.fail(paused, "late").stale
    assert queue.succeed(taken, "fresh").status is JobStatus.SUCCEEDED
    assert queue.get(job.id).result == "fresh"


def test_a_duplicate_delivery_of_a_finished_job_is_dropped(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.submit("primes", {"limits": [5]})
    delivery = queue.fetch("c1", count=1, block_s=0.01)[0]
    attempt = queue.begin(delivery)
    assert attempt is not None
    queue.succeed(attempt, 3)
    assert queue.begin(delivery) is None


def test_the_queue_is_bounded(make_queue: QueueFactory) -> None:
    queue = make_queue(max_queued=2)
    queue.submit("primes", {})
    queue.submit("primes", {})
    with pytest.raises(Overloaded):
        queue.submit("primes", {})


def test_oldest_age_is_that_of_the_oldest_unacknowledged_entry(
    make_queue: QueueFactory, clock: Clock, redis_client: redis.Redis
) -> None:
    queue = make_queue()
    queue.submit("primes", {})
    seconds, _micros = redis_client.time()  # type: ignore[misc]
    clock.now = seconds + 30.0  # the entry's id carries Redis's clock
    assert 29.0 <= queue.depth().oldest_age_s <= 31.0


def test_unknown_ids_are_not_found(make_queue: QueueFactory) -> None:
    queue = make_queue()
    for job_id in ("nope", "0" * 32, "../../etc"):
        with pytest.raises(NotFound):
            queue.get(job_id)


def test_redis_down_is_a_dependency_error(clock: Clock) -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    queue = JobQueue(down, clock=clock)
    with pytest.raises(DependencyUnavailable):
        queue.submit("primes", {})
    with pytest.raises(DependencyUnavailable):
        queue.depth()


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    assert [backoff.delay(n, rand=lambda: 0.999) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.999, 1.998, 3.996, 7.992, 9.99]
    )
    assert backoff.delay(3, rand=lambda: 0.0) == 0.0


def test_depth_before_any_consumer_made_the_group(redis_client: redis.Redis, clock: Clock) -> None:
    queue = JobQueue(redis_client, clock=clock)
    assert queue.depth().queued == 0  # no stream, no group: zeros, not an error
    queue.submit("primes", {})
    assert (queue.depth().queued, queue.depth().pending) == (1, 0)
