"""Per-client rate limiting shared by every worker of every instance, without a Redis round trip per request.

The limit (`RATE_LIMIT`, `limits` syntax: "200/second", "100/minute;2000/hour") is a token bucket per
client and limit, kept in Redis as GCRA (the "theoretical arrival time" of the next token, one key): a
rate of N per period and a burst of B tokens, so that over any interval of length t at most
B + N * t / period requests are admitted, all workers together. Redis's clock decides, never a worker's.

Workers lease tokens: one Lua call takes up to `lease` tokens from the shared bucket at once, and the worker
spends them locally, one per request, with no Redis call. With the default sizes (B a tenth of N, at least
min(N, 10); a lease half of B, at most 100) a request costs 1/lease Redis calls: 0.1 at 200/second, 0.01 at
the limits a benchmark sets. What that trades (docs/reliability.md, "Rate limiting"):
- precision: tokens a worker leased but has not spent yet are admitted later, so over an interval at most
  workers * lease more than the bucket's bound get through; and a worker holding unspent tokens admits
  requests while another, with none left, refuses them;
- burst tolerance: a client may send B requests at once, then N per period; "200/second" no longer admits
  200 requests in the first millisecond as a fixed window would;
- RateLimit-Remaining is this worker's view as of its last lease: the tokens left in the bucket then, plus
  its own unspent ones.
Refusals are remembered locally until a token frees up, so a client hammering past its limit costs no
Redis calls either.

Fails OPEN: when Redis is unreachable the request is allowed, Redis is not asked again for a second, and a
warning is logged at most once per 10 s. Rate limiting protects capacity; refusing every request because
the limiter's store is down would turn a Redis outage into a full outage of endpoints that do not even
need Redis.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from cachetools import LRUCache
from limits import parse_many
from opentelemetry import metrics

from app.settings import Settings

log = logging.getLogger(__name__)

FAIL_OPEN_LOG_INTERVAL_S = 10.0
FAIL_OPEN_RETRY_S = 1.0
MAX_CLIENT_ID_CHARS = 128
MAX_LEASE = 100
MAX_CLIENTS = 10_000  # local state kept per (limit, client); the least recently seen go first
KEY_PREFIX = "platform:ratelimit"

# KEYS[1] the bucket's next-token time (us); ARGV interval (us per token), burst span (us), tokens wanted.
# Returns tokens granted, tokens left in the bucket, us until it is full, us until the next token.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval, span, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local room = math.floor((now + span - tat) / interval)
local grant = math.max(0, math.min(want, room))
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
local next_token = math.max(0, tat + interval - now - span)
return {grant, room - grant, string.format('%.0f', tat - now), string.format('%.0f', next_token)}
"""


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float


@dataclass(frozen=True, slots=True)
class Limit:
    """One rate, as a GCRA bucket: `amount` per `period_s`, bursts of `burst`, leased `lease` at a time."""

    amount: int
    period_s: float
    burst: int
    lease: int

    @classmethod
    def parse(cls, text: str) -> list[Limit]:
        limits = []
        for item in parse_many(text):
            amount, period_s = int(item.amount), float(item.get_expiry())
            burst = max(math.ceil(amount / 10), min(amount, 10))
            limits.append(cls(amount, period_s, burst, max(1, min(burst // 2, MAX_LEASE))))
        return limits

    @property
    def interval_us(self) -> float:
        return self.period_s * 1_000_000 / self.amount

    def key(self, client: str) -> str:
        return f"{KEY_PREFIX}:{self.amount}/{self.period_s:g}s:{client}"


@dataclass(slots=True)
class _Budget:
    """What this worker holds of one client's bucket, and what the bucket looked like at the last lease."""

    tokens: int = 0
    left_at_lease: int = 0
    full_at: float = 0.0  # monotonic seconds
    refused_until: float = 0.0
    # One lease at a time: threads that find the budget empty wait for it instead of leasing too.
    leasing: threading.Lock = field(default_factory=threading.Lock)


class RateLimiter:
    def __init__(
        self,
        settings: Settings,
        *,
        connection_pool: redis.ConnectionPool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = Limit.parse(settings.rate_limit)
        client = (
            redis.Redis(connection_pool=connection_pool)
            if connection_pool is not None
            else redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
        )
        self._lease = client.register_script(_LEASE)
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: LRUCache[tuple[Limit, str], _Budget] = LRUCache(MAX_CLIENTS)
        self._redis_back_at = 0.0
        self._last_fail_open_log = -math.inf
        self._decisions = metrics.get_meter("app.resilience.ratelimit").create_counter(
            "platform.ratelimit.decisions", unit="{request}", description="Rate limiter decisions"
        )
        for result in ("allowed", "rejected"):  # both series exist from the start: 0, not absence
            self._decisions.add(0, {"result": result})

    def check(self, client_id: str) -> RateDecision:
        """Take one token from each of the client's limits; the decision names the most constraining."""
        client = _bounded(client_id)
        decision: RateDecision | None = None
        for limit in self._limits:
            current = self._take(limit, client)
            if decision is None or not current.allowed or current.remaining < decision.remaining:
                decision = current
            if not current.allowed:
                break
        assert decision is not None  # parse_many never returns an empty list
        self._decisions.add(1, {"result": "allowed" if decision.allowed else "rejected"})
        return decision

    def _take(self, limit: Limit, client: str) -> RateDecision:
        with self._lock:
            budget = self._budgets.get((limit, client))
            if budget is None:
                budget = self._budgets[(limit, client)] = _Budget()
            local = self._take_locally(limit, budget)
        if local is not None:
            return local
        with budget.leasing:
            with self._lock:
                local = self._take_locally(limit, budget)  # another thread may have leased meanwhile
            if local is not None:
                return local
            return self._take_leased(limit, client, budget)

    def _take_locally(self, limit: Limit, budget: _Budget) -> RateDecision | None:
        """From tokens in hand, a remembered refusal, or failing open; None when a lease is needed."""
        now = self._clock()
        if budget.tokens > 0:
            budget.tokens -= 1
            return self._decision(limit, budget, now, allowed=True)
        if now < budget.refused_until:
            return self._decision(limit, budget, now, allowed=False)
        if now < self._redis_back_at:  # failing open until Redis is tried again
            return RateDecision(True, limit.amount, limit.amount, 0.0)
        return None

    def _take_leased(self, limit: Limit, client: str, budget: _Budget) -> RateDecision:
        try:
            granted, left, full_us, next_us = self._lease(
                keys=[limit.key(client)],
                args=[f"{limit.interval_us:.3f}", f"{limit.burst * limit.interval_us:.3f}", limit.lease],
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._fail_open()
            return RateDecision(True, limit.amount, limit.amount, 0.0)
        now = self._clock()
        with self._lock:
            budget.tokens += int(granted)
            budget.left_at_lease = int(left)
            budget.full_at = now + int(full_us) / 1e6
            if budget.tokens > 0:
                budget.tokens -= 1
                return self._decision(limit, budget, now, allowed=True)
            budget.refused_until = now + int(next_us) / 1e6
            return self._decision(limit, budget, now, allowed=False)

    @staticmethod
    def _decision(limit: Limit, budget: _Budget, now: float, *, allowed: bool) -> RateDecision:
        if allowed:
            remaining, reset_s = budget.left_at_lease + budget.tokens, max(0.0, budget.full_at - now)
        else:
            remaining, reset_s = 0, max(0.0, budget.refused_until - now)
        return RateDecision(allowed, limit.amount, remaining, reset_s)

    def _fail_open(self) -> None:
        now = self._clock()
        with self._lock:
            self._redis_back_at = now + FAIL_OPEN_RETRY_S
            if now - self._last_fail_open_log < FAIL_OPEN_LOG_INTERVAL_S:
                return
            self._last_fail_open_log = now
        log.warning("rate limiter cannot reach redis; allowing requests (fail open)")


def _bounded(client_id: str) -> str:
    """Keep Redis keys short whatever the caller id is (an id is not a secret, a digest is fine)."""
    if len(client_id) <= MAX_CLIENT_ID_CHARS:
        return client_id
    return "sha256:" + hashlib.sha256(client_id.encode()).hexdigest()
