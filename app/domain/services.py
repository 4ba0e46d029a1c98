"""Everything one worker needs, built after fork from Settings; the one place the domain is wired.

`build_services` opens no socket and starts no thread (redis-py connects lazily); `start()` starts the
background parts (cache invalidation listener, worker pool) and `close()` releases everything.
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
from app.domain.compute import ComputeService
from app.domain.crypto import CryptoService
from app.domain.items import ItemStore
from app.domain.quotes import QuoteService
from app.resilience.ratelimit import RateLimiter
from app.runtime.pool import WorkerPool
from app.settings import Settings

log = logging.getLogger(__name__)

READINESS_CACHE_S = 1.0
# Connections beyond the request threads: invalidation listener, readiness, chaos, rate limiter.
EXTRA_REDIS_CONNECTIONS = 4
REDIS_HEALTH_CHECK_INTERVAL_S = 30


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
    chaos: ChaosControl
    pool: WorkerPool
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


def build_services(settings: Settings) -> Services:
    """Wire every operation for one worker. Opens nothing yet; call `start()` in the worker."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.http_threads + settings.grpc_handler_threads + EXTRA_REDIS_CONNECTIONS,
        timeout=settings.redis_timeout_s,  # waiting for a free connection is bounded too
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )
    client = redis.Redis(connection_pool=pool)
    chaos = ChaosControl(client)
    worker_pool = WorkerPool(
        settings.pool_processes,
        settings.pool_queue_size,
        settings.pool_task_timeout_s,
        preload=["app.domain.compute"],
    )
    return Services(
        settings=settings,
        redis=client,
        items=ItemStore(client, settings, chaos),
        crypto=CryptoService.from_settings(settings),
        compute=ComputeService(worker_pool),
        quotes=QuoteService(settings),
        auth=Authenticator(settings),
        ratelimiter=RateLimiter(settings, connection_pool=pool),
        chaos=chaos,
        pool=worker_pool,
    )
