from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.domain.chaos import CHAOS_KEY, NO_FAULTS, ChaosControl, InjectedFault
from app.domain.errors import DependencyUnavailable, InvalidArgument
from tests.conftest import PrivateRedis


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = time.time()

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def clients(redis_url: str) -> Iterator[list[redis.Redis]]:
    made = [redis.Redis.from_url(redis_url, socket_timeout=0.5) for _ in range(2)]
    yield made
    for client in made:
        client.close()


def control(client: redis.Redis, clocks: Clocks, rng: float = 0.5) -> ChaosControl:
    return ChaosControl(client, wall_clock=clocks.time, clock=clocks.monotonic, rng=lambda: rng)


def test_no_faults_by_default(clients: list[redis.Redis], clocks: Clocks) -> None:
    state = control(clients[0], clocks).get()
    assert state == NO_FAULTS
    assert not state.active
    assert dataclasses.asdict(state) == {
        "redis_error_rate": 0.0,
        "loop_block_ms": 0,
        "gil_block_ms": 0,
        "job_failure_rate": 0.0,
        "job_delay_ms": 0,
        "expires_at": 0.0,
    }


def test_set_merges_and_expires_by_itself(clients: list[redis.Redis], clocks: Clocks) -> None:
    chaos = control(clients[0], clocks)
    chaos.set({"redis_error_rate": 0.25})
    state = chaos.set({"loop_block_ms": 100})
    assert (state.redis_error_rate, state.loop_block_ms, state.gil_block_ms) == (0.25, 100, 0)
    assert state.expires_at == pytest.approx(clocks.wall + 300)
    assert 295 <= clients[0].ttl(CHAOS_KEY) <= 300  # type: ignore[operator]
    short = chaos.set({"gil_block_ms": 5, "ttl_s": 10})
    assert 5 <= clients[0].ttl(CHAOS_KEY) <= 10  # type: ignore[operator]
    clocks.wall += 10.5  # past expires_at: off even before anyone rereads Redis
    assert chaos.get() == NO_FAULTS
    assert short.active


def test_reset_clears_everything(clients: list[redis.Redis], clocks: Clocks) -> None:
    chaos = control(clients[0], clocks)
    chaos.set({"redis_error_rate": 1, "gil_block_ms": 50})
    assert chaos.set({"reset": True}) == NO_FAULTS
    assert clients[0].exists(CHAOS_KEY) == 0
    assert chaos.get() == NO_FAULTS


def test_every_worker_sees_a_change_within_the_refresh_interval(
    clients: list[redis.Redis], clocks: Clocks
) -> None:
    operator, worker = control(clients[0], clocks), control(clients[1], clocks)
    assert worker.get() == NO_FAULTS  # read and cached
    operator.set({"redis_error_rate": 0.5})
    clocks.mono += 0.9
    assert worker.get() == NO_FAULTS  # still the cached read: no Redis call per request
    clocks.mono += 0.1
    assert worker.get().redis_error_rate == 0.5


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"redis_error_rate": 1.5}, "redis_error_rate"),
        ({"redis_error_rate": -0.1}, "redis_error_rate"),
        ({"redis_error_rate": "0.5"}, "redis_error_rate"),
        ({"redis_error_rate": True}, "redis_error_rate"),
        ({"redis_error_rate": float("nan")}, "redis_error_rate"),
        ({"loop_block_ms": 5001}, "loop_block_ms"),
        ({"loop_block_ms": -1}, "loop_block_ms"),
        ({"gil_block_ms": 1.5}, "gil_block_ms"),
        ({"job_failure_rate": 2}, "job_failure_rate"),
        ({"job_delay_ms": 60_001}, "job_delay_ms"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 3601}, "ttl_s"),
        ({"reset": "yes"}, "reset"),
        ({"explode": 1}, "explode"),
    ],
)
def test_bad_changes_name_the_field(
    clients: list[redis.Redis], clocks: Clocks, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        control(clients[0], clocks).set(changes)
    assert info.value.field == field
    assert clients[0].exists(CHAOS_KEY) == 0


def test_error_rate_fails_that_share_of_calls(clients: list[redis.Redis], clocks: Clocks) -> None:
    control(clients[0], clocks).set({"redis_error_rate": 0.5})
    control(clients[1], clocks, rng=0.6).maybe_fail_redis()  # draw above the rate: passes
    with pytest.raises(DependencyUnavailable):
        control(clients[1], clocks, rng=0.4).maybe_fail_redis()


def test_get_never_raises_when_redis_is_down(private_redis: PrivateRedis, clocks: Clocks) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        chaos = control(client, clocks)
        chaos.set({"gil_block_ms": 20})
        private_redis.stop()
        clocks.mono += 5
        assert chaos.get().gil_block_ms == 20  # the last known state
        with pytest.raises(DependencyUnavailable):
            chaos.set({"reset": True})
    finally:
        client.close()


def test_job_faults_delay_then_fail_the_configured_share(clients: list[redis.Redis], clocks: Clocks) -> None:
    chaos = control(clients[0], clocks)
    chaos.maybe_fail_job()  # no faults: nothing happens
    chaos.set({"job_failure_rate": 1, "job_delay_ms": 1})
    with pytest.raises(InjectedFault):
        chaos.maybe_fail_job()
