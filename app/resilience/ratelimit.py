"""Per-client rate limiting shared by every worker, on Redis (the `limits` library).

Strategy: sliding window counter (two counters per client and window, weighted), which is O(1) memory
per client where a moving window keeps one timestamp per request. The counters live in Redis, so all
workers of all instances draw from one budget per client.

Fails OPEN: when Redis is unreachable the request is allowed (and a warning is logged at most once per
10 s). Rate limiting protects capacity; refusing every request because the limiter's store is down
would turn a Redis outage into a full outage of endpoints that do not even need Redis.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from opentelemetry import metrics

from app.settings import Settings

log = logging.getLogger(__name__)

FAIL_OPEN_LOG_INTERVAL_S = 10.0
NAMESPACE = "platform"
MAX_CLIENT_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float


class RateLimiter:
    def __init__(
        self,
        settings: Settings,
        *,
        connection_pool: redis.ConnectionPool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._items: list[RateLimitItem] = parse_many(settings.rate_limit)
        if connection_pool is not None:
            storage = RedisStorage(settings.redis_url, connection_pool=connection_pool)
        else:
            storage = RedisStorage(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._clock = clock
        self._log_lock = threading.Lock()
        self._last_fail_open_log = -FAIL_OPEN_LOG_INTERVAL_S - 1.0
        self._decisions = metrics.get_meter("app.resilience.ratelimit").create_counter(
            "platform.ratelimit.decisions", unit="{request}", description="Rate limiter decisions"
        )

    def check(self, client_id: str) -> RateDecision:
        """Consume one request from `client_id`'s budget and say whether it may proceed."""
        ident = _bounded(client_id)
        decision: RateDecision | None = None
        try:
            for item in self._items:
                allowed = self._limiter.hit(item, NAMESPACE, ident)
                stats = self._limiter.get_window_stats(item, NAMESPACE, ident)
                current = RateDecision(
                    allowed=allowed,
                    limit=item.amount,
                    remaining=max(0, stats.remaining),
                    reset_after_s=max(0.0, stats.reset_time - time.time()),
                )
                # Report the most constraining limit: a rejection, else the one with the least left.
                if decision is None or not allowed or current.remaining < decision.remaining:
                    decision = current
                if not allowed:
                    break
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._log_fail_open()
            first = self._items[0]
            decision = RateDecision(
                allowed=True, limit=first.amount, remaining=first.amount, reset_after_s=0.0
            )
        assert decision is not None  # parse_many never returns an empty list
        self._decisions.add(1, {"result": "allowed" if decision.allowed else "rejected"})
        return decision

    def _log_fail_open(self) -> None:
        now = self._clock()
        with self._log_lock:
            if now - self._last_fail_open_log < FAIL_OPEN_LOG_INTERVAL_S:
                return
            self._last_fail_open_log = now
        log.warning("rate limiter cannot reach redis; allowing requests (fail open)")


def _bounded(client_id: str) -> str:
    """Keep Redis keys short whatever the caller id is (an id is not a secret, a digest is fine)."""
    if len(client_id) <= MAX_CLIENT_ID_CHARS:
        return client_id
    return "sha256:" + hashlib.sha256(client_id.encode()).hexdigest()
