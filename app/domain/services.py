"""The domain's operations for one worker, behind one object that both transports hold.

Built by `app.worker.build_services` (which opens no socket and starts no thread: redis-py connects
lazily); `start()` starts the background parts (cache invalidation listener, worker pool), `readiness()`
says whether the worker should get traffic, and `close()` releases everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from app.domain.auth import Authenticator
from app.domain.chaos import ChaosControl
from app.domain.compute import ComputeService, TaskPool
from app.domain.crypto import CryptoService
from app.domain.edge import EdgePolicy
from app.domain.items import ItemStore
from app.domain.job_service import JobService
from app.domain.quotes import QuoteService
from app.resilience.ratelimit import RateLimiter
from app.settings import Settings

log = logging.getLogger(__name__)

READINESS_CACHE_S = 1.0


@dataclass(eq=False)
class Services:
    settings: Settings
    redis: redis.Redis
    items: ItemStore
    crypto: CryptoService
    compute: ComputeService
    quotes: QuoteService
    auth: Authenticator
    ratelimiter: RateLimiter
    edge: EdgePolicy
    chaos: ChaosControl
    pool: TaskPool
    jobs: JobService
    _checks: dict[str, Callable[[], bool]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _shutting_down: bool = field(default=False, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)
    _redis_ok: bool = field(default=False, init=False, repr=False)
    _redis_checked_at: float = field(default=float("-inf"), init=False, repr=False)

    def start(self) -> None:
        """Start the background parts; call once in the worker (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.items.start()
        self.pool.start()

    def begin_shutdown(self) -> None:
        """From now on readiness reports 'shutting down' so load balancers stop sending traffic."""
        self._shutting_down = True

    def add_readiness_check(self, name: str, fn: Callable[[], bool]) -> None:
        """While `fn()` is falsy (or raises), readiness lists `name` as a reason (e.g. 'grpc not serving')."""
        with self._lock:
            self._checks[name] = fn

    def readiness(self) -> list[str]:
        """Reasons this worker should not get traffic; [] when ready. Cheap: the Redis PING is cached 1 s."""
        reasons: list[str] = []
        if self._shutting_down:
            reasons.append("shutting down")
        if not self._redis_reachable():
            reasons.append("redis unreachable")
        with self._lock:
            checks = list(self._checks.items())
        for name, check in checks:
            try:
                ok = bool(check())
            except Exception:
                log.debug("readiness check %s failed", name, exc_info=True)
                ok = False
            if not ok:
                reasons.append(name)
        return reasons

    def _redis_reachable(self) -> bool:
        now = time.monotonic()
        if now - self._redis_checked_at < READINESS_CACHE_S:
            return self._redis_ok
        try:
            ok = bool(self.redis.ping())
        except redis.exceptions.RedisError:
            ok = False
        self._redis_ok, self._redis_checked_at = ok, time.monotonic()
        return ok

    def close(self, timeout: float | None = None) -> None:
        """Stop background work and release connections; bounded by `timeout` (default: graceful timeout)."""
        self.begin_shutdown()
        limit = self.settings.graceful_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        self.items.close(timeout=min(2.0, limit))
        self.pool.close(wait=True, timeout=max(0.0, deadline - time.monotonic()))
        self.quotes.close()
        self.redis.close()
        self.redis.connection_pool.disconnect()
