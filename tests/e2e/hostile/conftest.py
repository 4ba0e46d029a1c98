"""One real deployment for every hostile-input test: explicit keys (APP_ENV=test), OTLP to a receiver.

The service runs with its real keys in the environment, exports every span, metric and log record to an
OtlpReceiver, and every response the tests get goes through `Hostile.send` / `Hostile.rpc`, which keep
it, so that tests/e2e/hostile/test_secrets.py can search all of it for secrets at the end.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from app.settings import b64encode
from tests.conftest import wait_until
from tests.e2e.conftest import Proc, base_env, mint, start_api, start_upstream
from tests.e2e.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.e2e

SERVICE = "platform.v1.PlatformService"
# Codes that mean the service failed, not the caller: never the answer to anything a client sends.
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines and lines[0].startswith("HTTP/1.1 100"):  # Expect: 100-continue answered first
        return parse_response(body)
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


@dataclass
class Hostile:
    api: Proc
    upstream: Proc
    receiver: OtlpReceiver
    env: dict[str, str]
    token: str  # read write admin
    keys: dict[str, str]  # the secrets in the service's environment
    responses: list[bytes] = field(default_factory=list)  # every response body and error detail seen
    channel: grpc.Channel | None = None

    def send(self, raw: bytes, timeout: float = 15.0) -> RawResponse:
        """`raw` as the whole request on a fresh connection; the response, read until the server closes."""
        with socket.create_connection(("127.0.0.1", self.api.port), timeout=timeout) as sock:
            sock.sendall(raw)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        data = b"".join(chunks)
        self.responses.append(data)
        return parse_response(data)

    def rpc(self, method: str, payload: bytes, metadata: Any, timeout: float = 15.0) -> tuple[Any, bytes]:
        """`payload` as the request message's bytes; (status code, response or details bytes)."""
        assert self.channel is not None
        path = f"/{SERVICE}/{method}"
        if method == "WatchQuotes":
            stream = self.channel.unary_stream(path, lambda b: b, lambda b: b)
            try:
                body = b"".join(stream(payload, metadata=metadata, timeout=timeout))
                return grpc.StatusCode.OK, body
            except grpc.RpcError as err:
                return self._failed(err)
        call = self.channel.unary_unary(path, lambda b: b, lambda b: b)
        try:
            body = call(payload, metadata=metadata, timeout=timeout)
        except grpc.RpcError as err:
            return self._failed(err)
        self.responses.append(body)
        return grpc.StatusCode.OK, body

    def _failed(self, err: grpc.RpcError) -> tuple[Any, bytes]:
        details = (err.details() or "").encode()
        self.responses.append(details)
        for _, value in err.trailing_metadata() or ():
            self.responses.append(value if isinstance(value, bytes) else value.encode())
        return err.code(), details

    def assert_still_ready(self) -> None:
        """Both workers alive (the same ones), ready, and no traceback anywhere in the service's output."""
        seen: set[str] = set()

        def both_ready() -> bool:
            r = self.send(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert r.status == 200, r.body
            seen.add(r.headers["x-instance-id"])
            return len(seen) >= 2

        wait_until(both_ready, timeout=20, message="/readyz 200 from both workers")
        assert len(self.api.worker_pids()) == 2
        assert self.channel is not None
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        text = self.api.log.text()
        assert "Traceback" not in text and '"level": "ERROR"' not in text, text[-4000:]


def http_request(
    method: str, target: str, *, token: str | None = None, headers: dict[str, str] | None = None,
    body: bytes = b"", content_type: str | None = "application/json",
) -> bytes:  # fmt: skip
    """A request as bytes (latin-1 for the head), with Content-Length and Connection: close."""
    fields = {"Host": "hostile.test", "Connection": "close"}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    if content_type is not None and body:
        fields["Content-Type"] = content_type
    if body or method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


def explicit_keys() -> dict[str, str]:
    return {
        "AUTH_SIGNING_KEY": b64encode(os.urandom(32)),
        "CRYPTO_KEYS": f"h1:{b64encode(os.urandom(32))},h0:{b64encode(os.urandom(32))}",
        "CRYPTO_SIGNING_KEY": b64encode(os.urandom(32)),
    }


@pytest.fixture(scope="package")
def hostile(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    receiver = OtlpReceiver().start()
    keys = explicit_keys()
    env = base_env(
        redis_server,
        tmp_path_factory.mktemp("hostile"),
        APP_ENV="test",
        **keys,
        # Fuzzing sends a few hundred calls a second with one token; the limiter is not under test here.
        RATE_LIMIT="1000000/second",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        OTLP_ACCESS_LOGS="true",
    )
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{api.grpc_port}",
        # The client must be able to send what the server has to refuse.
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.max_metadata_size", 1 << 20)],
    )
    stack = Hostile(api, upstream, receiver, env, mint(env, "hostile"), keys, channel=channel)
    try:
        yield stack
    finally:
        channel.close()
        api.stop()
        upstream.stop()
        receiver.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
