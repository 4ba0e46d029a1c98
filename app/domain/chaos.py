"""Fault injection shared by every worker: one Redis key, read at most once a second per worker.

An operator sets faults (`POST /admin/chaos`); every worker sees them within a second because each keeps
the last read for at most `REFRESH_S`, so the per-request cost is a clock read. Faults always expire by
themselves (`ttl_s`, default 300 s, at most an hour): a forgotten experiment cannot outlive its key, and
the expiry is also checked locally, so faults end on time even while Redis is unreachable.

`get()` never raises: with Redis down it returns the last known state (or no faults at all).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from app.domain.errors import DependencyUnavailable, InvalidArgument

log = logging.getLogger(__name__)

CHAOS_KEY = "platform:chaos"
REFRESH_S = 1.0
DEFAULT_TTL_S = 300
MAX_TTL_S = 3600
MAX_BLOCK_MS = 5000
MAX_JOB_DELAY_MS = 60_000
RATES = ("redis_error_rate", "job_failure_rate")
DELAYS = {"loop_block_ms": MAX_BLOCK_MS, "gil_block_ms": MAX_BLOCK_MS, "job_delay_ms": MAX_JOB_DELAY_MS}


class InjectedFault(Exception):
    """A failure chaos asked for (not a DomainError: to the code that meets it, it is any failure)."""


@dataclass(frozen=True, slots=True)
class ChaosState:
    redis_error_rate: float = 0.0  # share of item-store Redis calls failed on purpose, 0..1
    loop_block_ms: int = 0  # block the gRPC event loop this long, once a second
    gil_block_ms: int = 0  # hold the GIL this long, once a second
    job_failure_rate: float = 0.0  # share of job attempts failed on purpose, 0..1
    job_delay_ms: int = 0  # every job attempt takes this much longer, before its work
    expires_at: float = 0.0  # unix seconds when the faults end; 0 when none are set

    @property
    def active(self) -> bool:
        return bool(
            self.redis_error_rate
            or self.loop_block_ms
            or self.gil_block_ms
            or self.job_failure_rate
            or self.job_delay_ms
        )


NO_FAULTS = ChaosState()


class ChaosControl:
    def __init__(
        self,
        client: redis.Redis,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._redis = client
        self._wall_clock = wall_clock
        self._clock = clock
        self._rng = rng
        self._refresh_lock = threading.Lock()
        self._state = NO_FAULTS
        self._read_at = -math.inf
        self._unreadable = False  # during an outage: warned once, told again when it ends

    def get(self) -> ChaosState:
        """The faults in force now (cached for at most a second); never raises."""
        if self._clock() - self._read_at >= REFRESH_S and self._refresh_lock.acquire(blocking=False):
            # One thread refreshes; the others keep using the last state meanwhile instead of queueing.
            try:
                self._state = self._load()
                if self._unreadable:
                    self._unreadable = False
                    log.info("chaos state readable again")
            except redis.exceptions.RedisError as exc:
                if not self._unreadable:  # once per outage, not once a second
                    self._unreadable = True
                    log.warning("chaos state unreadable, keeping the last known: %s", type(exc).__name__)
            finally:
                self._read_at = self._clock()
                self._refresh_lock.release()
        state = self._state
        if state.expires_at and state.expires_at <= self._wall_clock():
            return NO_FAULTS
        return state

    def set(self, changes: Mapping[str, Any]) -> ChaosState:
        """Validate and merge `changes` into the current faults; `{"reset": true}` clears them all.

        Deliberately not subject to `redis_error_rate` itself, or an operator could lock themselves out.
        """
        if not isinstance(changes, Mapping):
            raise InvalidArgument("expected an object", field="body")
        unknown = sorted(set(changes) - {*RATES, *DELAYS, "ttl_s", "reset"})
        if unknown:
            raise InvalidArgument(f"unknown field {unknown[0]!r}", field=str(unknown[0]))
        reset = changes.get("reset", False)
        if not isinstance(reset, bool):
            raise InvalidArgument("must be true or false", field="reset")
        ttl_s = _int_in(changes.get("ttl_s", DEFAULT_TTL_S), "ttl_s", 1, MAX_TTL_S)
        updates: dict[str, Any] = {}
        for name in RATES:
            if name in changes:
                updates[name] = _rate(changes[name], name)
        for name, high in DELAYS.items():
            if name in changes:
                updates[name] = _int_in(changes[name], name, 0, high)
        try:
            if reset:
                self._redis.delete(CHAOS_KEY)
                state = NO_FAULTS
            else:
                current = self._load()
                state = replace(current, **updates, expires_at=self._wall_clock() + ttl_s)
                if state.active:
                    self._redis.set(CHAOS_KEY, json.dumps(asdict(state)), ex=ttl_s)
                else:
                    self._redis.delete(CHAOS_KEY)
                    state = NO_FAULTS
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise DependencyUnavailable("redis unavailable", retry_after_s=1) from exc
        self._state, self._read_at = state, self._clock()
        log.warning("chaos state set: %s", asdict(state))
        return state

    def maybe_fail_redis(self) -> None:
        """Called before each item-store Redis call: fail the configured share of them."""
        rate = self.get().redis_error_rate
        if rate and self._rng() < rate:
            raise DependencyUnavailable("redis unavailable", retry_after_s=1)

    def maybe_fail_job(self) -> None:
        """Called before each job attempt's work: delay it, then fail the configured share of them."""
        state = self.get()
        if state.job_delay_ms:
            time.sleep(state.job_delay_ms / 1000)
        if state.job_failure_rate and self._rng() < state.job_failure_rate:
            raise InjectedFault("job failed on purpose (chaos job_failure_rate)")

    def _load(self) -> ChaosState:
        raw: bytes | None = self._redis.get(CHAOS_KEY)  # type: ignore[assignment]  # sync client
        if raw is None:
            return NO_FAULTS
        try:
            data = json.loads(raw)
            return ChaosState(
                redis_error_rate=float(data["redis_error_rate"]),
                loop_block_ms=int(data["loop_block_ms"]),
                gil_block_ms=int(data["gil_block_ms"]),
                job_failure_rate=float(data.get("job_failure_rate", 0.0)),
                job_delay_ms=int(data.get("job_delay_ms", 0)),
                expires_at=float(data["expires_at"]),
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed chaos state in redis")
            return NO_FAULTS


def _int_in(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"must be an integer from {low} to {high}", field=field)
    return value


def _rate(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidArgument("must be a number from 0 to 1", field=field)
    return float(value)
