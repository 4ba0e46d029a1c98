"""Faults under load, on HTTP and gRPC at once (docs/reliability.md has a row, with measurements, for each).

Every test runs the real service (gunicorn, 2 workers) with steady load from tests/e2e/load.py: each
request on a new connection, as new clients and load balancers send them. The rate limit is raised out of
the way: the load would otherwise be refused by the service's own limiter, which is not the fault here.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from app.rpc.platform.v1 import platform_pb2 as pb
from tests.conftest import PrivateRedis, free_port, wait_until
from tests.e2e.conftest import Proc, base_env, mint, start_api, start_upstream
from tests.e2e.load import Load, Outcome, summary
from tests.e2e.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

KEY = "faults"
P99_TARGET_S = 0.5  # docs/slo.md
NOT_IN_THE_WAY = {"RATE_LIMIT": "1000000/second"}


@dataclass
class Deployment:
    api: Proc
    upstream: Proc
    token: str
    admin: str

    def load(self, threads: int = 3) -> Load:
        return Load(self.api, self.token, KEY, threads=threads).start()


def deploy(env: dict[str, str], **extra: str) -> Deployment:
    upstream = start_upstream(env)
    try:
        api = start_api({**env, **NOT_IN_THE_WAY, **extra}, upstream)
    except BaseException:
        upstream.stop()
        raise
    token, admin = mint(env, "faults"), mint(env, "faults-admin", "admin")
    assert (
        api.request("PUT", f"/v1/items/{KEY}", {"value": {"fault": "tolerated"}}, token=token).status == 200
    )
    return Deployment(api, upstream, token, admin)


@pytest.fixture
def deployment(redis_server: str, tmp_path: Path) -> Iterator[Deployment]:
    deployed = deploy(base_env(redis_server, tmp_path))
    yield deployed
    deployed.api.stop()
    deployed.upstream.stop()


def wait_for_outcomes(load: Load, count: int) -> None:
    wait_until(lambda: len(load.outcomes) >= count, timeout=30, message=f"{count} requests under load")


def p99(outcomes: list[Outcome]) -> float:
    latencies = sorted(o.seconds for o in outcomes)
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def report(fault: str, **measured: object) -> None:
    """What docs/reliability.md's row for this fault reports (shown with pytest -s)."""
    print(f"\nRELIABILITY {fault}: {measured}")


# -- process faults -----------------------------------------------------------------------------------


def test_sigterm_under_load_refuses_nothing_during_the_drain_delay_and_flushes_telemetry(
    redis_server: str, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()
    env = base_env(
        redis_server,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
        DRAIN_DELAY_S="3",
        GRACEFUL_TIMEOUT_S="10",
    )
    deployed = deploy(env)
    try:
        load = deployed.load()
        wait_for_outcomes(load, 60)
        deployed.api.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Readiness turns 503 at once: load balancers stop sending...
        wait_until(
            lambda: deployed.api.request("GET", "/readyz").status == 503, timeout=2, message="readiness 503"
        )
        not_ready_after = time.monotonic() - signalled
        # ... while clients that still send, on new connections, are served until the delay ends.
        time.sleep(max(0.0, signalled + 2.5 - time.monotonic()))  # a window, not a condition: keep sending
        outcomes = load.stop()
        assert deployed.api.popen.wait(20) == 0
        failed = [o for o in outcomes if not o.ok]
        assert failed == [], failed[:5]
        # The telemetry of the last requests left before the workers exited: a server span for each.
        served = {t: sum(o.transport == t for o in outcomes) for t in ("http", "grpc")}
        spans = receiver.received.spans
        exported = {
            "http": sum(s.name == "GET /v1/items/<key>" and s.kind == 2 for s in spans),
            "grpc": sum(s.name == "/platform.v1.PlatformService/GetItem" and s.kind == 2 for s in spans),
        }
        assert exported["http"] >= served["http"] and exported["grpc"] >= served["grpc"], (exported, served)
        report("sigterm", **summary(outcomes), not_ready_after_s=round(not_ready_after, 2), spans=exported)
    finally:
        deployed.api.stop()
        deployed.upstream.stop()
        receiver.stop()


def test_sigkill_of_one_worker_under_load_fails_only_what_it_had_in_flight(deployment: Deployment) -> None:
    load = deployment.load()
    wait_for_outcomes(load, 60)
    victim = deployment.api.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: len(set(deployment.api.worker_pids()) - {victim}) == 2,
        timeout=30,
        message="the killed worker to be replaced",
    )
    replaced_after = time.monotonic() - killed
    wait_until(
        lambda: len(load.outcomes) and load.outcomes[-1].started > killed + 6, timeout=30, message="6 s"
    )
    outcomes = load.stop()
    failed = [o for o in outcomes if not o.ok]
    # Only requests the victim had in flight: all of them began before it died (its sockets close with it).
    assert all(o.started < killed + 0.5 for o in failed), failed[:5]
    late = [o for o in outcomes if o.started > killed + 5]
    assert late and all(o.ok for o in late)
    assert {o.transport for o in late} == {"http", "grpc"}
    # The replacement serves both transports.
    instances: set[str] = set()

    def both_workers_serve() -> bool:
        instances.add(deployment.api.request("GET", "/readyz").instance)
        instances.add(deployment.api.rpc("GetItem", pb.GetItemRequest(key=KEY), deployment.token)[1])
        return len(instances) >= 2

    wait_until(both_workers_serve, timeout=20, message="both workers to serve again")
    report("sigkill", **summary(outcomes), replaced_after_s=round(replaced_after, 2))


def test_sighup_reload_under_load_fails_no_request(deployment: Deployment) -> None:
    before = set(deployment.api.worker_pids())
    load = deployment.load(threads=2)
    wait_for_outcomes(load, 40)
    deployment.api.popen.send_signal(signal.SIGHUP)
    hupped = time.monotonic()

    def replaced() -> bool:
        pids = set(deployment.api.worker_pids())
        return len(pids) == 2 and not (pids & before)

    wait_until(replaced, timeout=60, message="every worker replaced")
    replaced_after = time.monotonic() - hupped
    wait_for_outcomes(load, len(load.outcomes) + 40)  # the new workers serve the load too
    outcomes = load.stop()
    failed = [o for o in outcomes if not o.ok]
    assert failed == [], failed[:5]
    assert any(o.started > hupped + replaced_after for o in outcomes)
    report("sighup", **summary(outcomes), replaced_after_s=round(replaced_after, 2))


# -- dependency faults -------------------------------------------------------------------------------


def workers_rss_mib(api: Proc) -> float:
    total = 0
    for pid in api.worker_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def test_otlp_endpoint_down_then_back_slows_nothing_counts_what_is_lost_and_resumes(
    redis_server: str, tmp_path: Path
) -> None:
    port = free_port()  # the collector: down, then back
    env = base_env(
        redis_server,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
    )
    deployed = deploy(env)
    receiver: OtlpReceiver | None = None
    try:
        rss_before = workers_rss_mib(deployed.api)
        load = deployed.load()
        wait_until(lambda: len(load.outcomes) >= 1500, timeout=120, message="1500 requests, collector down")
        down = load.stop()
        rss_after = workers_rss_mib(deployed.api)
        assert [o for o in down if not o.ok] == []
        assert p99(down) < P99_TARGET_S, p99(down)
        # Bounded queues: memory does not grow with what could not be sent.
        assert rss_after - rss_before < 50, (rss_before, rss_after)

        def lost() -> float:
            text = deployed.api.request("GET", "/metrics").body.decode()
            failed = re.findall(
                r'^otel_sdk_exporter_span_exported_total\{[^}]*error_type="[^"]+"[^}]*\} (\S+)$', text, re.M
            )
            return sum(float(v) for v in failed)

        wait_until(lambda: lost() > 0, timeout=30, message="lost spans counted in a metric")
        receiver = OtlpReceiver(port).start()
        back = time.monotonic()
        deployed.api.request("GET", f"/v1/items/{KEY}", token=deployed.token)
        rx = receiver.received
        wait_until(lambda: rx.spans and rx.metrics, timeout=60, message="export to resume")
        report(
            "otlp-down",
            **summary(down),
            p99_ms=round(p99(down) * 1000, 1),
            rss_growth_mib=round(rss_after - rss_before, 1),
            spans_lost=lost(),
            resumed_after_s=round(time.monotonic() - back, 1),
        )
    finally:
        deployed.api.stop()
        deployed.upstream.stop()
        if receiver is not None:
            receiver.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_down_then_back(private_redis: PrivateRedis, tmp_path: Path) -> None:
    deployed = deploy(base_env(private_redis.url, tmp_path))
    api, token = deployed.api, deployed.token
    try:
        warnings_before = api.log.text().count("chaos state unreadable")
        private_redis.stop()
        down = time.monotonic()
        wait_until(lambda: api.request("GET", "/readyz").status == 503, timeout=5, message="readiness 503")

        def item_answers_503_fast() -> bool:
            started = time.monotonic()
            r = api.request("GET", f"/v1/items/{KEY}", token=token)
            return r.status == 503 and time.monotonic() - started < 1.0

        wait_until(item_answers_503_fast, timeout=10, message="item reads to answer 503, fast")
        r = api.request("GET", f"/v1/items/{KEY}", token=token)
        assert r.headers["content-type"] == "application/problem+json" and r.json()["title"]
        with pytest.raises(grpc.RpcError) as info:
            api.rpc("GetItem", pb.GetItemRequest(key=KEY), token)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Everything that does not need Redis keeps working (the rate limiter fails open).
        assert api.request("GET", "/healthz").status == 200
        assert api.request("POST", "/v1/crypto/encrypt", {"plaintext": "c2VjcmV0"}, token=token).status == 200
        api.rpc("Encrypt", pb.EncryptRequest(plaintext=b"secret"), token)
        assert api.request("GET", "/v1/quotes/ACME", token=token).status == 200
        time.sleep(3)  # an outage of a few seconds: the warning below must not repeat every second
        outage_s = time.monotonic() - down
        private_redis.start()  # an empty Redis: writes and reads work again, the item is written anew
        back = time.monotonic()
        seen: list[tuple[int, int, int]] = []

        def recovered() -> bool:
            put = api.request("PUT", f"/v1/items/{KEY}", {"value": "again"}, token=token).status
            get = api.request("GET", f"/v1/items/{KEY}", token=token).status
            ready = api.request("GET", "/readyz").status
            seen.append((put, get, ready))
            return (put, get, ready) == (200, 200, 200)

        wait_until(recovered, timeout=20, message=lambda: f"recovery without a restart: {seen[-5:]}")
        recovered_after = time.monotonic() - back
        api.rpc("GetItem", pb.GetItemRequest(key=KEY), token)
        warnings = api.log.text().count("chaos state unreadable") - warnings_before
        assert warnings <= 2, f"{warnings} warnings: at most one per worker per outage"
        report(
            "redis-down",
            outage_s=round(outage_s, 1),
            recovered_after_s=round(recovered_after, 2),
            warnings=warnings,
        )
    finally:
        deployed.api.stop()
        deployed.upstream.stop()


def test_upstream_slow_hanging_and_failing(redis_server: str, tmp_path: Path) -> None:
    deployed = deploy(
        base_env(redis_server, tmp_path), BREAKER_OPEN_S="2", BREAKER_MIN_CALLS="4", BREAKER_WINDOW="8"
    )
    api, upstream, token, admin = deployed.api, deployed.upstream, deployed.token, deployed.admin

    def chaos(**faults: object) -> None:
        assert upstream.request("POST", "/chaos", {**faults, "ttl_s": 120}, token=admin).status == 200

    def timed_quote(symbol: str) -> tuple[int, float, bool]:
        started = time.monotonic()
        r = api.request("GET", f"/v1/quotes/{symbol}", token=token, timeout=15)
        return r.status, time.monotonic() - started, bool(r.status == 200 and r.json()["stale"])

    try:
        warmed: set[str] = set()

        def both_workers_have_a_last_good_quote() -> bool:  # each worker keeps its own
            r = api.request("GET", "/v1/quotes/SLOWUP", token=token)
            warmed.add(r.instance)
            return r.status == 200 and len(warmed) >= 2

        wait_until(
            both_workers_have_a_last_good_quote, timeout=20, message="a last good quote in each worker"
        )
        # Slow: served within the per-attempt read timeout (1 s by default).
        chaos(latency_ms=300)
        status, seconds, stale = timed_quote("SLOWUP")
        assert (status, stale) == (200, False) and seconds < 1.0
        # A gRPC client's deadline is honoured end to end: the call ends with it, not with ours (2.5 s),
        # while the upstream takes 2 s. (Before the hanging part: that one opens the breaker.)
        chaos(latency_ms=2000)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            api.rpc("GetQuote", pb.GetQuoteRequest(symbol="NEVRSEEN"), token, timeout=0.4)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0

        def server_gave_up_in_time() -> bool:  # the server's own record of that call: ended within 1 s
            # DEADLINE_EXCEEDED when the server's deadline ended it; CANCELLED when the client's, a moment
            # earlier (the server's deadline starts when the call arrives), cancelled it first.
            text = api.request("GET", "/metrics").body.decode()
            buckets = re.findall(
                r'^rpc_server_call_duration_seconds_bucket\{le="1\.0",rpc_grpc_status_code="[14]",'
                r'rpc_method="GetQuote"[^}]*\} (\S+)$',
                text,
                re.M,
            )
            return sum(float(count) for count in buckets) >= 1

        def get_quote_records() -> str:
            lines = api.request("GET", "/metrics").body.decode().splitlines()
            return "\n".join(line for line in lines if line.startswith("rpc_server") and "GetQuote" in line)

        wait_until(
            server_gave_up_in_time,
            timeout=10,
            message=lambda: f"the server to end the call at the deadline; recorded:\n{get_quote_records()}",
        )
        # Hanging: the overall deadline (2.5 s) holds; the last good value is served, marked stale.
        chaos(latency_ms=30_000)
        status, seconds, stale = timed_quote("SLOWUP")
        assert (status, stale) == (200, True) and seconds < 2.5 + 0.5
        status, seconds, _ = timed_quote("NEVRSEEN")
        assert status == 503 and seconds < 2.5 + 0.5
        # Failing: the breaker opens (stale quotes meanwhile), then recovers through half-open.
        chaos(latency_ms=0, error_rate=1.0)
        wait_until(lambda: timed_quote("SLOWUP")[2] and breaker_open(api), timeout=30, message="breaker open")
        chaos(reset=True)
        opened = time.monotonic()

        def recovered() -> bool:  # keep calling: probes in half-open close each worker's breaker
            status, _, stale = timed_quote("SLOWUP")
            return status == 200 and not stale and not breaker_open(api)

        wait_until(recovered, timeout=30, message="the breaker closed again, fresh quotes")
        report("upstream", breaker_recovered_after_s=round(time.monotonic() - opened, 1))
    finally:
        upstream.request("POST", "/chaos", {"reset": True}, token=admin)
        api.stop()
        upstream.stop()


def breaker_open(api: Proc) -> bool:
    text = api.request("GET", "/metrics").body.decode()
    return (
        re.search(
            r'^platform_circuit_breaker_state\{name="upstream",pid="\d+",state="open"\} 1\.0$', text, re.M
        )
        is not None
    )
