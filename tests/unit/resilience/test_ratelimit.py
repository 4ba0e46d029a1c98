from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pytest

from app.resilience.ratelimit import RateLimiter
from app.settings import Settings
from tests.conftest import free_port
from tests.unit.conftest import Metrics


def test_budget_is_shared_by_all_workers(
    make_settings: Callable[..., Settings], metric_values: Metrics
) -> None:
    settings = make_settings(rate_limit="5/minute")
    worker_a, worker_b = RateLimiter(settings), RateLimiter(settings)
    client = f"client-{uuid.uuid4().hex[:8]}"
    rejected_before = metric_values.value("platform.ratelimit.decisions", result="rejected")
    decisions = [limiter.check(client) for limiter in (worker_a, worker_b, worker_a, worker_b, worker_a)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 for d in decisions)
    refused = worker_b.check(client)
    assert not refused.allowed
    assert refused.remaining == 0
    assert 0 < refused.reset_after_s <= 60
    assert metric_values.value("platform.ratelimit.decisions", result="rejected") - rejected_before == 1
    # Another client has its own budget.
    assert worker_b.check(f"other-{client}").allowed


def test_most_constraining_of_several_limits(make_settings: Callable[..., Settings]) -> None:
    limiter = RateLimiter(make_settings(rate_limit="100/minute;2/hour"))
    client = uuid.uuid4().hex
    first = limiter.check(client)
    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    assert limiter.check(client).allowed
    assert not limiter.check(client).allowed


def test_long_client_ids_stay_bounded(make_settings: Callable[..., Settings]) -> None:
    limiter = RateLimiter(make_settings(rate_limit="1/minute"))
    long_id = "x" * 10_000
    assert limiter.check(long_id).allowed
    assert not limiter.check(long_id).allowed


def test_fails_open_when_redis_is_down_and_logs_rarely(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, metric_values: Metrics
) -> None:
    now = [0.0]
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit="1/minute")
    limiter = RateLimiter(settings, clock=lambda: now[0])
    allowed_before = metric_values.value("platform.ratelimit.decisions", result="allowed")
    with caplog.at_level(logging.WARNING, logger="app.resilience.ratelimit"):
        decisions = [limiter.check("c") for _ in range(5)]
        now[0] = 9.9
        limiter.check("c")
        now[0] = 10.1
        limiter.check("c")
    assert all(d.allowed for d in decisions)
    assert len([r for r in caplog.records if "fail open" in r.getMessage()]) == 2
    assert metric_values.value("platform.ratelimit.decisions", result="allowed") - allowed_before == 7
