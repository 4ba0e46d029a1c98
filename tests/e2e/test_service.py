"""The real service: gunicorn with 2 workers, HTTP and gRPC from each, redis-server, the upstream."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import signal
import socket
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from app.rpc.platform.v1 import platform_pb2 as pb
from tests.conftest import free_port, wait_until
from tests.e2e.conftest import Proc, Stack, base_env, mint, spawn, start_api, start_upstream

pytestmark = pytest.mark.e2e


def grpc_error(proc: Proc, method: str, request: Any, token: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        proc.rpc(method, request, token)
    return info.value


def json_value(value: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    v.string_value = value
    return v


def test_both_transports_served_by_both_workers(stack: Stack) -> None:
    token = stack.token("both-transports")
    http_seen: set[str] = set()
    grpc_seen: set[str] = set()

    def http_spread() -> bool:
        r = stack.api.request("GET", "/v1/quotes/ACME", token=token)
        assert r.status == 200, r.body
        http_seen.add(r.instance)
        return len(http_seen) >= 2

    def grpc_spread() -> bool:
        quote, served_by = stack.api.rpc("GetQuote", pb.GetQuoteRequest(symbol="ACME"), token)
        assert quote.symbol == "ACME" and quote.price > 0
        grpc_seen.add(served_by)
        return len(grpc_seen) >= 2

    wait_until(http_spread, timeout=20, message="HTTP requests to reach both workers")
    wait_until(grpc_spread, timeout=20, message="gRPC connections to reach both workers")
    assert http_seen == grpc_seen, "the same two workers serve both transports"


def test_every_json_line_names_the_service_that_wrote_it(stack: Stack) -> None:
    """gunicorn's own lines too: the upstream's say quotes-upstream, the API's platform-api."""
    for proc, service in ((stack.api, "platform-api"), (stack.upstream, "quotes-upstream")):
        records = [json.loads(line) for line in proc.log.lines if line.startswith("{")]
        assert any(r["logger"].startswith("gunicorn") for r in records), proc.name
        assert {r["service"] for r in records} == {service}, proc.name


def test_write_in_one_worker_is_read_fresh_in_the_other(stack: Stack) -> None:
    token = stack.token("cache-coherence")
    key = f"coherent-{uuid.uuid4().hex[:8]}"
    assert stack.api.request("PUT", f"/v1/items/{key}", {"value": "v1"}, token=token).status == 200

    # Warm both workers' caches with v1.
    warmed: set[str] = set()

    def warm() -> bool:
        r = stack.api.request("GET", f"/v1/items/{key}", token=token)
        assert r.json()["value"] == "v1"
        warmed.add(r.instance)
        return len(warmed) >= 2

    wait_until(warm, timeout=20, message="both workers to cache v1")

    for n in range(2, 6):
        writer = stack.api.request("PUT", f"/v1/items/{key}", {"value": f"v{n}"}, token=token)
        assert writer.status == 200
        written_at = time.monotonic()
        fresh: set[str] = set()

        def every_worker_fresh(expected: str = f"v{n}", fresh: set[str] = fresh) -> bool:
            r = stack.api.request("GET", f"/v1/items/{key}", token=token)
            if r.json()["value"] == expected:
                fresh.add(r.instance)
            return len(fresh) >= 2

        wait_until(every_worker_fresh, timeout=20, interval=0, message=f"both workers to read v{n}")
        # Bound documented in app/domain/items.py (pub/sub delivery); generous for a loaded CI box.
        assert time.monotonic() - written_at < 5
        assert writer.instance  # the write went through one of the two workers that now read fresh


def test_bad_input_gets_problem_json_naming_the_field(stack: Stack) -> None:
    token = stack.token("bad-input")
    reader = stack.token("reader-only", scope="read")
    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        ("PUT", "/v1/items/bad%20key!", {"raw": b'{"value": 1}'}, 400, "key"),
        ("PUT", "/v1/items/k1", {"raw": b"{not json"}, 400, "body"),
        ("PUT", "/v1/items/k1", {"body": {"no_value": 1}}, 400, "value"),
        ("PUT", "/v1/items/k1", {"body": {"value": 1, "ttl_s": -5}}, 400, "ttl_s"),
        ("PUT", "/v1/items/k1", {"body": {"value": 1, "ttl_s": "soon"}}, 400, "ttl_s"),
        ("POST", "/v1/crypto/encrypt", {"body": {"plaintext": "%%%"}}, 400, "plaintext"),
        (
            "POST",
            "/v1/crypto/decrypt",
            {"body": {"key_id": "nope", "nonce": "AAAA", "ciphertext": "AAAA"}},
            400,
            None,
        ),
        ("POST", "/v1/compute/primes", {"body": {"limit": 10**12}}, 400, "limit"),
        ("POST", "/v1/compute/hash", {"body": {"password": "cA==", "algorithm": "md5"}}, 400, "algorithm"),
        ("POST", "/v1/compute/hash", {"body": {"password": "cA==", "params": {"n": 3}}}, 400, "params.n"),
        ("GET", "/v1/quotes/lower", {}, 400, "symbol"),
        ("GET", "/v1/items/never-written", {}, 404, None),
        ("GET", "/v1/nowhere", {}, 404, None),
        ("DELETE", "/v1/crypto/sign", {}, 405, None),
        ("POST", "/admin/chaos", {"body": {"redis_error_rate": 7}}, 400, "redis_error_rate"),
    ]
    for method, path, kw, status, field in cases:
        body = kw.get("body")
        raw = kw.get("raw")
        headers = {"Content-Type": "application/json"} if raw is not None else None
        r = stack.api.request(method, path, body, token=token, raw=raw, headers=headers)
        assert r.status == status, (method, path, r.status, r.body)
        assert r.headers["content-type"].startswith("application/problem+json"), (path, r.headers)
        problem = r.json()
        assert problem["status"] == status and problem["title"] and problem["detail"]
        if field is not None:
            assert problem.get("field") == field, (path, problem)

    # Body over MAX_BODY_BYTES (1 MiB default): 413, nothing read past the limit.
    big = b'{"value": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = stack.api.request(
        "PUT", "/v1/items/big", token=token, raw=big, headers={"Content-Type": "application/json"}
    )
    assert r.status == 413 and r.json()["status"] == 413

    # Auth: missing, malformed, forged alg=none, expired, wrong scope.
    none_alg = (
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        + b"."
        + base64.urlsafe_b64encode(b'{"sub":"x","scope":"read","exp":9999999999}').rstrip(b"=")
        + b"."
    )
    for header, status in [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer not.a.jwt", 401),
        (f"Bearer {none_alg.decode()}", 401),
    ]:
        r = stack.api.request("GET", "/v1/items/x", headers={"Authorization": header} if header else None)
        assert r.status == status and r.json()["status"] == status
    expired = mint(stack.env, "late", ttl=1)
    wait_until(
        lambda: stack.api.request("GET", "/v1/items/x", token=expired).status == 401,
        timeout=15,
        message="a token past its exp (with 5 s leeway) to be refused",
    )
    r = stack.api.request("PUT", "/v1/items/x", {"value": 1}, token=reader)
    assert r.status == 403 and r.json()["status"] == 403
    r = stack.api.request("GET", "/admin/chaos", token=reader)
    assert r.status == 403

    # The same mistakes over gRPC.
    cases_grpc = [
        ("GetItem", pb.GetItemRequest(key="bad key!"), token, grpc.StatusCode.INVALID_ARGUMENT),
        ("CountPrimes", pb.CountPrimesRequest(limit=10**12), token, grpc.StatusCode.INVALID_ARGUMENT),
        ("GetQuote", pb.GetQuoteRequest(symbol="lower"), token, grpc.StatusCode.INVALID_ARGUMENT),
        ("GetItem", pb.GetItemRequest(key="never-written"), token, grpc.StatusCode.NOT_FOUND),
        ("GetItem", pb.GetItemRequest(key="k"), None, grpc.StatusCode.UNAUTHENTICATED),
        ("GetItem", pb.GetItemRequest(key="k"), "garbage", grpc.StatusCode.UNAUTHENTICATED),
        (
            "PutItem",
            pb.PutItemRequest(key="k", value=json_value("v")),
            reader,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ]
    for method, request, tok, code in cases_grpc:
        err = grpc_error(stack.api, method, request, tok)
        assert err.code() == code, (method, err.code(), err.details())

    # Nothing a client did produced a 5xx or a traceback.
    assert "Traceback" not in stack.api.log.text()


def test_failing_upstream_opens_breaker_and_serves_stale(stack: Stack) -> None:
    token = stack.token("breaker")
    admin = stack.admin_token
    seen: set[str] = set()

    def both_workers_have_a_last_good_quote() -> bool:
        r = stack.api.request("GET", "/v1/quotes/BRKR", token=token)
        assert r.status == 200 and r.json()["stale"] is False
        seen.add(r.instance)
        return len(seen) >= 2

    wait_until(both_workers_have_a_last_good_quote, timeout=20, message="both workers to cache a quote")
    r = stack.upstream.request("POST", "/chaos", {"error_rate": 1.0, "ttl_s": 120}, token=admin)
    assert r.status == 200, r.body
    try:
        stale_from: set[str] = set()

        def stale_everywhere() -> bool:
            r = stack.api.request("GET", "/v1/quotes/BRKR", token=token)
            assert r.status == 200, r.body  # a last good value exists: never a 5xx
            if r.json()["stale"]:
                stale_from.add(r.instance)
            return len(stale_from) >= 2

        wait_until(stale_everywhere, timeout=30, interval=0.05, message="stale fallback from both workers")

        def breaker_open() -> bool:
            # Keep calling: the breaker decides on calls, and each worker has its own.
            assert stack.api.request("GET", "/v1/quotes/BRKR", token=token).status == 200
            text = stack.api.request("GET", "/metrics").body.decode()
            # One series per worker (its pid): open in at least one of them.
            return (
                re.search(
                    r'^platform_circuit_breaker_state\{name="upstream",pid="\d+",state="open"\} 1\.0$',
                    text,
                    re.M,
                )
                is not None
            )

        wait_until(breaker_open, timeout=30, interval=0.2, message="the upstream breaker to report open")

        # A symbol never fetched has no last good value: 503 with Retry-After, not a hang or a 500.
        r = stack.api.request("GET", "/v1/quotes/NEWSYM", token=token)
        assert r.status == 503 and int(r.headers["retry-after"]) >= 1
        err = grpc_error(stack.api, "GetQuote", pb.GetQuoteRequest(symbol="NEWSYM"), token)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stack.upstream.request("POST", "/chaos", {"reset": True}, token=admin)


def test_rate_limit_is_shared_across_workers(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("ratelimit")
    env = base_env(redis_server, tmp)
    upstream = start_upstream(env)
    # 10 per hour, all 10 at once (a burst of the whole amount): no token refills during the test.
    api = start_api(env, upstream, RATE_LIMIT="10/hour")
    try:
        token = mint(env, f"rl-{uuid.uuid4().hex[:6]}")
        # Two keep-alive connections, one per worker: the balanced accept gives the second connection to
        # the worker that holds none (fresh connections would go to whichever worker woke first).
        first, second = api.connect(), api.connect()
        try:
            results = [
                api.request("GET", "/v1/items/rl", token=token, connection=conn)
                for _ in range(15)
                for conn in (first, second)
            ]
        finally:
            first.close()
            second.close()
        assert len({r.instance for r in results}) == 2, "one connection per worker"
        allowed = [r for r in results if r.status != 429]
        rejected = [r for r in results if r.status == 429]
        assert len(allowed) == 10, [r.status for r in results]
        assert len({r.instance for r in allowed}) == 2, "both workers charged the same shared limit"
        assert len(rejected) == 20
        for r in rejected:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["ratelimit-limit"] == "10" and r.headers["ratelimit-remaining"] == "0"
            assert r.json()["status"] == 429
        err = grpc_error(api, "GetItem", pb.GetItemRequest(key="rl"), token)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Another caller has its own budget.
        assert api.request("GET", "/v1/items/rl", token=mint(env, "someone-else")).status == 404
    finally:
        api.stop()
        upstream.stop()


@pytest.mark.parametrize("setting", ["HTTP_PORT", "GRPC_PORT"])
def test_a_port_in_use_stops_the_service_with_one_line_naming_it(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory, setting: str
) -> None:
    tmp = tmp_path_factory.mktemp("port-in-use")
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port()}
    with socket.socket() as taken:  # another process's listener
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports[setting] = taken.getsockname()[1]
        env = base_env(redis_server, tmp, **{k: str(v) for k, v in ports.items()})
        proc = spawn("api", ["serve"], env, ports["HTTP_PORT"], ports["GRPC_PORT"])
        try:
            code = proc.popen.wait(30)
        finally:
            proc.stop()
    proc.log.join()
    lines = [line for line in proc.log.text().splitlines() if "APP_ENV=dev" not in line]
    # Before anything starts: no retry loop, no worker, the setting named, the configuration exit code.
    assert code == 2, lines
    assert lines == [
        f"error: {setting}={ports[setting]}: cannot listen on 127.0.0.1:{ports[setting]}: "
        "Address already in use (another process holds the port, or BIND_HOST is not a local "
        "address)"
    ]


def test_ctrl_c_stops_quietly(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ctrl-C reaches the whole process group: master, workers, their pool processes."""
    env = base_env(redis_server, tmp_path_factory.mktemp("ctrl-c"))
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    try:
        token = mint(env, "ctrl-c")
        # The pool processes are running (a task went through them) when the interrupt lands.
        r = api.request("POST", "/v1/compute/primes", {"limit": 1000}, token=token)
        assert r.status == 200, r.body
        os.killpg(api.popen.pid, signal.SIGINT)
        code = api.popen.wait(30)
    finally:
        api.stop()
        upstream.stop()
    api.log.join()
    text = api.log.text()
    assert code == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_sigterm_with_requests_in_flight_loses_none(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("sigterm")
    env = base_env(redis_server, tmp)
    upstream = start_upstream(env)
    api = start_api(env, upstream, UPSTREAM_READ_TIMEOUT_S="6", UPSTREAM_DEADLINE_S="8", DRAIN_DELAY_S="1")
    try:
        token = mint(env, "sigterm")
        admin = mint(env, "sigterm-admin", "admin")
        # Each upstream call takes 2.5 s, so the calls are surely in flight when SIGTERM lands.
        assert (
            upstream.request("POST", "/chaos", {"latency_ms": 2500, "ttl_s": 60}, token=admin).status == 200
        )

        def upstream_in_flight() -> float:
            text = upstream.request("GET", "/metrics").body.decode()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("http_server_active_requests")
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            http_calls = [pool.submit(api.request, "GET", "/v1/quotes/SLOW", token=token) for _ in range(8)]
            grpc_calls = [
                pool.submit(api.rpc, "GetQuote", pb.GetQuoteRequest(symbol="SLOW"), token) for _ in range(8)
            ]
            wait_until(lambda: upstream_in_flight() >= 16, timeout=10, message="16 calls in flight upstream")
            api.popen.send_signal(signal.SIGTERM)
            http_results = [f.result(timeout=30) for f in http_calls]
            grpc_results = [f.result(timeout=30) for f in grpc_calls]
        assert [r.status for r in http_results] == [200] * 8, [r.body for r in http_results]
        assert all(q.symbol == "SLOW" and not q.stale for q, _ in grpc_results)
        assert api.popen.wait(30) == 0
        text = api.log.text()
        assert "Traceback" not in text, text[-5000:]
    finally:
        api.stop()
        upstream.stop()


def test_known_series_are_on_metrics_at_zero_from_the_start(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Before any event: panels and rate() see 0, not "No data"; the breaker's state is per worker."""
    env = base_env(redis_server, tmp_path_factory.mktemp("zero"))
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    try:
        text = api.request("GET", "/metrics").body.decode()
        pids = api.worker_pids()
    finally:
        api.stop()
        upstream.stop()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    zero = [
        'platform_circuit_breaker_calls_total{name="upstream",outcome="rejected"}',
        'platform_circuit_breaker_transitions_total{from_state="closed",name="upstream",to_state="open"}',
        'platform_circuit_breaker_transitions_total{from_state="half_open",name="upstream",to_state="open"}',
        'platform_retry_attempts_total{dependency="upstream",outcome="gave_up"}',
        'platform_cache_requests_total{cache="quotes",result="stale"}',
        'platform_pool_rejections_total{task="hash"}',
        'platform_pool_rejections_total{task="primes"}',
        'platform_ratelimit_decisions_total{result="rejected"}',
    ]
    assert {series: values.get(series) for series in zero} == dict.fromkeys(zero, 0.0)
    for pid in pids:
        states = {
            s: values.get(f'platform_circuit_breaker_state{{name="upstream",pid="{pid}",state="{s}"}}')
            for s in ("closed", "open", "half_open")
        }
        assert states == {"closed": 1.0, "open": 0.0, "half_open": 0.0}, pid
