from __future__ import annotations

import threading
from collections.abc import Callable

from app.domain import context
from app.runtime.pool import WorkerPool
from app.settings import Settings
from app.worker import build_services
from tests.conftest import free_port, wait_until


def test_build_opens_nothing_until_start(make_settings: Callable[..., Settings]) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    services = build_services(make_settings())
    try:
        assert services.redis.connection_pool._connections == []  # type: ignore[attr-defined]
        assert {t.ident for t in threading.enumerate()} <= threads_before
        assert isinstance(services.pool, WorkerPool) and services.pool._executor is None
    finally:
        services.close(timeout=5)


def test_a_started_worker_serves_every_operation_and_is_ready(make_settings: Callable[..., Settings]) -> None:
    services = build_services(make_settings(pool_processes=1, rate_limit="100/minute"))
    services.start()
    services.start()  # idempotent
    try:
        wait_until(lambda: services.items.listener_connected, timeout=5, message="listener subscribed")
        assert services.readiness() == []
        assert services.items.put("k", {"a": 1}).version == 1
        assert services.crypto.decrypt(services.crypto.encrypt(b"x")) == b"x"
        assert services.compute.primes(10).count == 4
        token = services.auth.mint("alice", ["items:read"], ttl_s=60)
        with context.bind(context.RequestContext(request_id="r")):  # auth records the user in it
            assert services.auth.authenticate(f"Bearer {token}").subject == "alice"
        assert services.ratelimiter.check("alice").allowed
        assert services.chaos.get().active is False
    finally:
        services.close(timeout=5)


def test_readiness_reasons(make_settings: Callable[..., Settings]) -> None:
    services = build_services(make_settings())
    try:
        serving = {"grpc": False}
        services.add_readiness_check("grpc not serving", lambda: serving["grpc"])
        services.add_readiness_check("probe exploded", lambda: 1 / 0 == 0)
        assert services.readiness() == ["grpc not serving", "probe exploded"]
        serving["grpc"] = True
        services.begin_shutdown()
        assert services.readiness() == ["shutting down", "probe exploded"]
    finally:
        services.close(timeout=5)


def test_unreachable_redis_makes_the_worker_unready(make_settings: Callable[..., Settings]) -> None:
    services = build_services(
        make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    )
    try:
        assert services.readiness() == ["redis unreachable"]
        assert services.readiness() == ["redis unreachable"]  # cached: one PING a second at most
    finally:
        services.close(timeout=5)
