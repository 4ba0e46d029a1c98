"""Builds one worker from settings: the one place where the service's parts are wired together."""

from __future__ import annotations

import redis

from app.domain.auth import Authenticator
from app.domain.chaos import ChaosControl
from app.domain.compute import ComputeService
from app.domain.crypto import CryptoService
from app.domain.edge import EdgePolicy
from app.domain.items import ItemStore
from app.domain.quotes import QuoteService
from app.domain.services import Services
from app.resilience.ratelimit import RateLimiter
from app.runtime.pool import WorkerPool
from app.settings import Settings

# Redis connections beyond the request threads: invalidation listener, readiness, chaos, rate limiter.
EXTRA_REDIS_CONNECTIONS = 4
REDIS_HEALTH_CHECK_INTERVAL_S = 30


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
    auth = Authenticator(settings)
    ratelimiter = RateLimiter(settings, connection_pool=pool)
    return Services(
        settings=settings,
        redis=client,
        items=ItemStore(client, settings, chaos),
        crypto=CryptoService.from_settings(settings),
        compute=ComputeService(worker_pool),
        quotes=QuoteService(settings),
        auth=auth,
        ratelimiter=ratelimiter,
        edge=EdgePolicy(auth, ratelimiter),
        chaos=chaos,
        pool=worker_pool,
    )
