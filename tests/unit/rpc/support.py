"""Helpers of the gRPC tests (no tests here): a real stack in this process.

The real services from `build_services` against the session's redis-server, the real quotes upstream
(Flask on a real socket, in a thread), and a real GrpcServer on port 0 reached over real sockets with
the sync grpc client, as the contrib gRPC instrumentation's own tests do.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from werkzeug.serving import WSGIRequestHandler, make_server

from app.domain.services import Services
from app.rpc.client import call_metadata
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc
from app.rpc.server import GrpcServer
from app.settings import Settings, load_settings
from app.upstream import create_upstream_app
from app.worker import build_services
from tests.unit.conftest import settings_env

INSTANCE_ID = "rpc-test-instance"
T = TypeVar("T")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class Upstream:
    """The real quotes upstream on 127.0.0.1:<free port>; remembers the X-Request-ID of each request."""

    def __init__(self, settings: Settings) -> None:
        app = create_upstream_app(settings)
        self.request_ids: deque[str] = deque(maxlen=100)
        wsgi = app.wsgi_app

        def recording(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.request_ids.append(environ.get("HTTP_X_REQUEST_ID", ""))
            return wsgi(environ, start_response)

        app.wsgi_app = recording  # type: ignore[method-assign]
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="upstream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()


@dataclass
class RpcStack:
    settings: Settings
    services: Services
    server: GrpcServer
    upstream: Upstream
    channel: grpc.Channel
    stub: pb_grpc.PlatformServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def token(self, *scopes: str, subject: str = "rpc-tester", ttl_s: int = 600) -> str:
        return self.services.auth.mint(subject, scopes or ("read", "write"), ttl_s)

    def md(self, *scopes: str, subject: str = "rpc-tester", **kw: Any) -> tuple[tuple[str, str], ...]:
        """Call metadata with a fresh token for `scopes` (default read + write)."""
        return call_metadata(self.token(*scopes, subject=subject), **kw)


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    return load_settings(settings_env(redis_url=redis_url, grpc_handler_threads=4, **overrides))


@contextmanager
def rpc_stack(redis_url: str, *, start_pool: bool = True, **overrides: Any) -> Iterator[RpcStack]:
    """Upstream, services and a GrpcServer on a free port; everything stopped on exit."""
    env = settings_env(redis_url=redis_url, grpc_handler_threads=4, **overrides)
    upstream = Upstream(load_settings(env))
    settings = load_settings({**env, "UPSTREAM_URL": upstream.url})
    services = build_services(settings)
    server = GrpcServer(services, settings, INSTANCE_ID, port=0, host="127.0.0.1")
    channel: grpc.Channel | None = None
    try:
        if start_pool:
            services.start()
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        yield RpcStack(settings, services, server, upstream, channel, pb_grpc.PlatformServiceStub(channel))
    finally:
        if channel is not None:
            channel.close()
        server.stop(2)
        services.close(timeout=5)
        upstream.close()


def call_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError `call` raises (fails the test if it succeeds)."""
    try:
        call()
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call succeeded; an error status was expected")


def trailers(err: grpc.RpcError) -> dict[str, str | bytes]:
    return {md.key: md.value for md in err.trailing_metadata() or ()}


def rich_status(err: grpc.RpcError) -> status_pb2.Status:
    raw = trailers(err).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), "no grpc-status-details-bin trailer"
    return status_pb2.Status.FromString(raw)


def detail_of(err: grpc.RpcError, kind: type[T]) -> T | None:
    for packed in rich_status(err).details:
        msg = kind()
        if packed.Unpack(msg):
            return msg
    return None


def bad_field(err: grpc.RpcError) -> str:
    """The field named by the BadRequest detail (and, for people, at the start of the message)."""
    bad = detail_of(err, error_details_pb2.BadRequest)
    assert bad is not None and len(bad.field_violations) == 1, rich_status(err)
    field = str(bad.field_violations[0].field)
    assert err.details().startswith(f"{field}: "), err.details()
    return field
