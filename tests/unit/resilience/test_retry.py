from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.resilience.retry import RetryPolicy
from tests.unit.conftest import Metrics


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Timeline:
    """A clock that only moves when the policy sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class MaxRandom(random.Random):
    """uniform(a, b) -> b: the longest backoff full jitter allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


def policy(timeline: Timeline, rng: random.Random | None = None, **kwargs: object) -> RetryPolicy:
    params: dict[str, object] = {"max_attempts": 5, "base_s": 0.1, "cap_s": 0.5, "deadline_s": 10.0}
    params.update(kwargs)
    return RetryPolicy(
        dependency=f"dep-{uuid.uuid4().hex[:8]}",
        retryable=lambda e: isinstance(e, Transient),
        clock=timeline.clock,
        sleep=timeline.sleep,
        rng=rng or random.Random(7),
        **params,  # type: ignore[arg-type]
    )


def failing(times: int, exc: type[Exception] = Transient) -> Callable[[float], str]:
    calls = {"n": 0}

    def fn(_remaining: float) -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc("boom")
        return "ok"

    return fn


def test_full_jitter_stays_within_exponential_bounds_capped() -> None:
    timeline = Timeline()
    retry = policy(timeline, max_attempts=6)
    with pytest.raises(Transient):
        retry.call(failing(10))
    bounds = [0.1, 0.2, 0.4, 0.5, 0.5]  # base * 2**attempt, capped at 0.5
    assert len(timeline.sleeps) == 5
    for slept, bound in zip(timeline.sleeps, bounds, strict=True):
        assert 0.0 <= slept <= bound
    # Full jitter, not "equal jitter": a seeded draw lands in the lower half of some bound.
    assert any(s < b / 2 for s, b in zip(timeline.sleeps, bounds, strict=True))


def test_max_jitter_draw_sleeps_exactly_the_bound() -> None:
    timeline = Timeline()
    retry = policy(timeline, rng=MaxRandom(), max_attempts=4)
    assert retry.call(failing(3)) == "ok"
    assert timeline.sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_non_retryable_error_is_not_retried() -> None:
    timeline = Timeline()
    fn = failing(1, Permanent)
    with pytest.raises(Permanent):
        policy(timeline).call(fn)
    assert timeline.sleeps == []


def test_never_sleeps_past_the_deadline_and_passes_remaining_time() -> None:
    timeline = Timeline()
    seen: list[float] = []

    def slow_failure(remaining: float) -> str:
        seen.append(remaining)
        timeline.now += 0.3  # each attempt takes 0.3 s
        raise Transient

    retry = policy(timeline, rng=MaxRandom(), max_attempts=10, deadline_s=1.0)
    with pytest.raises(Transient):
        retry.call(slow_failure)
    # t=0 try, 0.3 fail, sleep 0.1 -> 0.4 try, 0.7 fail, next sleep 0.2 would end at 0.9 < 1.0
    # -> 0.9 try, 1.2 fail: out of time.
    assert seen == pytest.approx([1.0, 0.6, 0.1])
    assert timeline.sleeps == pytest.approx([0.1, 0.2])
    assert timeline.now == pytest.approx(1.2)


def test_gives_up_instead_of_a_sleep_that_would_cross_the_deadline() -> None:
    timeline = Timeline()
    retry = policy(timeline, rng=MaxRandom(), base_s=1.0, cap_s=5.0, deadline_s=0.5)
    with pytest.raises(Transient):
        retry.call(failing(5))
    assert timeline.sleeps == []
    assert timeline.now < 0.5


def test_attempts_are_counted_by_outcome(metric_values: Metrics) -> None:
    timeline = Timeline()
    retry = policy(timeline, max_attempts=3)
    assert retry.call(failing(2)) == "ok"
    with pytest.raises(Transient):
        retry.call(failing(5))
    with pytest.raises(Permanent):
        retry.call(failing(1, Permanent))
    counts = {
        outcome: metric_values.value("platform.retry.attempts", dependency=retry.dependency, outcome=outcome)
        for outcome in ("success", "retry", "gave_up")
    }
    assert counts == {"success": 1, "retry": 4, "gave_up": 2}


def test_retries_are_span_events(spans: InMemorySpanExporter) -> None:
    timeline = Timeline()
    with trace.get_tracer("test").start_as_current_span("caller"):
        policy(timeline).call(failing(2))
    (span,) = [s for s in spans.get_finished_spans() if s.name == "caller"]
    events = [e for e in span.events if e.name == "retry"]
    assert [e.attributes["retry.attempt"] for e in events] == [1, 2]  # type: ignore[index]
    assert all(e.attributes["error.type"] == "Transient" for e in events)  # type: ignore[index]
