from __future__ import annotations

import logging
import threading
import uuid

import pytest

from app.resilience.breaker import TRANSITIONS, CircuitBreaker, CircuitOpen
from tests.unit.conftest import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    params: dict[str, object] = {"window": 10, "min_calls": 4, "failure_rate": 0.5, "open_s": 5.0}
    params.update(kwargs)
    return CircuitBreaker(f"test-{uuid.uuid4().hex[:8]}", clock=clock, **params)  # type: ignore[arg-type]


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_success()


def state_gauge(metric_values: Metrics, name: str) -> dict[str, float]:
    return {
        attrs["state"]: point.value
        for attrs, point in metric_values.points("platform.circuit_breaker.state")
        if attrs["name"] == name
    }


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    breaker = make(FakeClock())
    fail(breaker, 3)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"


def test_opens_at_failure_rate_not_below() -> None:
    breaker = make(FakeClock(), min_calls=4, failure_rate=0.5)
    succeed(breaker, 3)
    fail(breaker, 2)  # 2 of 5 = 40 %
    assert breaker.state == "closed"
    fail(breaker)  # 3 of 6 = 50 %
    assert breaker.state == "open"


def test_window_forgets_old_failures() -> None:
    breaker = make(FakeClock(), window=4, min_calls=4, failure_rate=0.75)
    fail(breaker, 2)
    succeed(breaker, 2)  # window: F F S S (50 %)
    succeed(breaker, 2)  # window: S S S S: the failures slid out
    fail(breaker, 2)  # window: S S F F (50 %) -> still closed
    assert breaker.state == "closed"
    fail(breaker)  # S F F F (75 %)
    assert breaker.state == "open"


def test_open_rejects_then_half_open_after_open_s_and_probes_close(metric_values: Metrics) -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=2)
    fail(breaker, 4)
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(5.0)
    clock.now += 4.9
    assert breaker.state == "open"
    assert breaker.retry_after_s() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert breaker.retry_after_s() == 0.0
    # Exactly half_open_calls probes are admitted.
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed"
    assert metric_values.value("platform.circuit_breaker.calls", name=breaker.name, outcome="rejected") == 2
    assert metric_values.value("platform.circuit_breaker.calls", name=breaker.name, outcome="failure") == 4
    assert metric_values.value("platform.circuit_breaker.calls", name=breaker.name, outcome="success") == 2


def test_probe_failure_reopens_for_another_open_s() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=3)
    fail(breaker, 4)
    clock.now += 5
    succeed(breaker)
    fail(breaker)
    assert breaker.state == "open"
    clock.now += 4.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.state == "half_open"


def test_closed_after_recovery_starts_with_a_clean_window() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=1)
    fail(breaker, 4)
    clock.now += 5
    succeed(breaker)
    assert breaker.state == "closed"
    fail(breaker, 3)  # the four old failures are gone: 3 < min_calls
    assert breaker.state == "closed"


def test_stuck_half_open_rearms_probes_after_open_s() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=1)
    fail(breaker, 4)
    clock.now += 5
    assert breaker.allow()  # a probe that never reports back
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()


def test_state_gauge_and_transition_counter_follow_the_state(metric_values: Metrics) -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_calls=1)
    assert state_gauge(metric_values, breaker.name) == {"closed": 1, "open": 0, "half_open": 0}

    def transitions() -> dict[tuple[str, str], float]:
        return {
            (a["from_state"], a["to_state"]): p.value
            for a, p in metric_values.points("platform.circuit_breaker.transitions")
            if a["name"] == breaker.name
        }

    # Every possible transition is a series from the start, at 0 (a panel shows 0, not "No data").
    assert transitions() == dict.fromkeys(TRANSITIONS, 0)
    fail(breaker, 4)
    assert state_gauge(metric_values, breaker.name) == {"closed": 0, "open": 1, "half_open": 0}
    clock.now += 5
    assert state_gauge(metric_values, breaker.name) == {"closed": 0, "open": 0, "half_open": 1}
    succeed(breaker)
    assert state_gauge(metric_values, breaker.name) == {"closed": 1, "open": 0, "half_open": 0}
    assert transitions() == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
        ("half_open", "open"): 0,
    }


def test_closed_breaker_stops_reporting_its_gauge(metric_values: Metrics) -> None:
    breaker = make(FakeClock())
    assert state_gauge(metric_values, breaker.name)
    breaker.close()
    assert state_gauge(metric_values, breaker.name) == {}


def test_transitions_are_logged_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(FakeClock())
    with caplog.at_level(logging.WARNING, logger="app.resilience.breaker"):
        fail(breaker, 4)
    assert any(breaker.name in r.getMessage() and "closed -> open" in r.getMessage() for r in caplog.records)


def test_call_wraps_outcomes_and_raises_circuit_open() -> None:
    clock = FakeClock()
    breaker = make(clock)
    assert breaker.call(lambda: 42) == 42
    for _ in range(3):  # 3 of 4 calls failed: 75 % >= 50 %
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    with pytest.raises(CircuitOpen) as info:
        breaker.call(lambda: 42)
    assert info.value.retry_after_s == pytest.approx(5.0)


def test_rejects_a_min_calls_the_window_can_never_hold() -> None:
    with pytest.raises(ValueError, match="min_calls"):
        CircuitBreaker("x", window=5, min_calls=6)


def test_thread_safe_counts_under_contention() -> None:
    breaker = make(FakeClock(), window=1000, min_calls=1000, failure_rate=1.0)

    def hammer() -> None:
        for _ in range(200):
            if breaker.allow():
                breaker.record_success()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 1600 successes went into a 1000-slot window; 999 failures cannot reach a 100 % rate.
    fail(breaker, 999)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"
