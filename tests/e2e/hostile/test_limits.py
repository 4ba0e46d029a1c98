"""Every limit of docs/reliability.md ("Limits"), hit on the real service, with the answer it promises."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

import grpc
import pytest

from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.server import MAX_METADATA_BYTES
from app.runtime.head_first import HEAD_MAX_BYTES, HEAD_TIMEOUT_S
from tests.conftest import wait_until
from tests.e2e.hostile.conftest import Hostile, http_request

pytestmark = pytest.mark.e2e

MAX_BODY_BYTES = 1024 * 1024  # the default of MAX_BODY_BYTES, which this deployment uses
BODY_ROUTES = [
    ("PUT", "/v1/items/big"),
    ("POST", "/v1/crypto/encrypt"),
    ("POST", "/v1/crypto/decrypt"),
    ("POST", "/v1/crypto/sign"),
    ("POST", "/v1/crypto/verify"),
    ("POST", "/v1/compute/hash"),
    ("POST", "/v1/compute/primes"),
    ("POST", "/admin/chaos"),
]


def problem_status(hostile: Hostile, raw: bytes) -> int:
    r = hostile.send(raw)
    if r.status >= 400:
        assert r.headers["content-type"] == "application/problem+json", (r.status, r.body)
        assert json.loads(r.body)["status"] == r.status
    return r.status


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_body_over_max_body_bytes_is_413(hostile: Hostile, method: str, path: str) -> None:
    body = b'{"value": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert problem_status(hostile, http_request(method, path, token=hostile.token, body=body)) == 413


def test_a_grpc_message_over_the_limit_is_resource_exhausted(hostile: Hostile) -> None:
    auth = [("authorization", f"Bearer {hostile.token}")]
    over = pb.EncryptRequest(plaintext=b"x" * MAX_BODY_BYTES).SerializeToString()
    assert hostile.rpc("Encrypt", over, auth)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Just under the transport limit, the domain's own 64 KiB plaintext bound answers instead.
    under = pb.EncryptRequest(plaintext=b"x" * (MAX_BODY_BYTES - 100)).SerializeToString()
    assert hostile.rpc("Encrypt", under, auth)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_request_head_limits(hostile: Hostile) -> None:
    path = "/v1/items/k1"
    fields = {f"X-F{i}": "v" for i in range(101)}  # limit_request_fields = 100
    assert problem_status(hostile, http_request("GET", "/v1/items/k1", headers=fields)) == 431
    assert problem_status(hostile, http_request("GET", "/v1/items/k1", headers={"X-Big": "v" * 8200})) == 431
    assert problem_status(hostile, http_request("GET", "/v1/items/" + "k" * 4100)) == 414
    # Each field within its limit, the whole head past HEAD_MAX_BYTES: refused before any thread sees it.
    many = {f"X-F{i}": "v" * 8000 for i in range(HEAD_MAX_BYTES // 8000 + 1)}
    assert problem_status(hostile, http_request("GET", "/v1/items/k1", headers=many)) == 431
    # And right below every limit, the request is served (404: no such item).
    ok = {f"X-F{i}": "v" * 300 for i in range(90)}
    assert problem_status(hostile, http_request("GET", path, token=hostile.token, headers=ok)) == 404


def test_grpc_metadata_limit_is_deterministic(hostile: Hostile) -> None:
    payload = pb.GetItemRequest(key="k1").SerializeToString()
    auth = ("authorization", f"Bearer {hostile.token}")
    # grpc's default refuses a random share of calls between 8 and 16 KiB; one limit makes every call alike.
    just_under = [auth, ("x-pad", "p" * (MAX_METADATA_BYTES - len(hostile.token) - 1024))]
    assert {hostile.rpc("GetItem", payload, just_under)[0] for _ in range(20)} == {grpc.StatusCode.NOT_FOUND}
    over = [auth, ("x-pad", "p" * MAX_METADATA_BYTES)]
    codes = {hostile.rpc("GetItem", payload, over)[0] for _ in range(5)}
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}


@contextmanager
def slow_clients(port: int, count: int, interval_s: float) -> Iterator[list[socket.socket]]:
    """`count` connections sending a request head one byte every `interval_s`, until the block ends."""
    head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"p" * 4000
    stop = threading.Event()
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]

        def drip() -> None:
            i = 0
            while not stop.wait(interval_s):
                for sock in socks:
                    with suppress(OSError):  # a connection the server closed: keep dripping on the rest
                        sock.send(head[i % len(head) : i % len(head) + 1])
                i += 1

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        try:
            yield socks
        finally:
            stop.set()
            thread.join(5)


def test_slowloris_does_not_take_the_threads(hostile: Hostile) -> None:
    """64 connections sending headers a byte at a time: 4x the 16 request threads of the deployment."""
    with slow_clients(hostile.api.port, count=64, interval_s=0.2):
        time.sleep(0.5)  # not a condition to wait for: the slow clients are meant to be mid-head now
        for _ in range(20):
            start = time.monotonic()
            r = hostile.send(http_request("GET", "/healthz"), timeout=5)
            assert r.status == 200
            # Plain gthread: no answer at all while they drip (measured: every request timed out).
            assert time.monotonic() - start < 2.0


def test_a_head_that_never_completes_gets_408(hostile: Hostile) -> None:
    with socket.create_connection(("127.0.0.1", hostile.api.port), timeout=HEAD_TIMEOUT_S + 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\n")  # and nothing more
        start = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        waited = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"application/problem+json" in data
    assert HEAD_TIMEOUT_S - 1 <= waited <= HEAD_TIMEOUT_S + 3


def test_idle_connections_do_not_delay_others(hostile: Hostile) -> None:
    with ExitStack() as stack:
        for _ in range(64):
            stack.enter_context(socket.create_connection(("127.0.0.1", hostile.api.port)))
        wait_until(
            lambda: hostile.send(http_request("GET", "/healthz"), timeout=5).status == 200,
            timeout=2,
            message="/healthz answered while 64 connections sit idle",
        )
