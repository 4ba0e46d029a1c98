"""What every measured server shares for a whole bench run: redis-server, the OTLP receiver, a bearer token
and the pre-encoded gRPC request."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from google.protobuf import json_format

from app.rpc.platform.v1 import platform_pb2 as pb
from bench.otlp_sink import OtlpSink
from bench.processes import BenchFailure, Children, free_port, wait_until
from bench.servers import ITEM_KEY, app_environment, bench_environment, clean_environment

REQUIRED_TOOLS = ("wrk", "h2load", "redis-server")
GRPC_METHOD = "/platform.v1.PlatformService/GetItem"
GRPC_PREFIX_BYTES = 5  # compressed flag + 4-byte big-endian length
TOKEN_TTL_S = 86_400


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message on the wire: flag 0, length, message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_response_bytes(item: dict[str, object]) -> int:
    """The DATA bytes of one successful GetItem response: the Item the HTTP API returned, as gRPC sends it.

    Errors come as trailers with no Item, so h2load's DATA byte count proves every call succeeded, also
    where the service counts nothing (telemetry off).
    """
    fields = {k: v for k, v in item.items() if v is not None}
    return GRPC_PREFIX_BYTES + len(json_format.ParseDict(fields, pb.Item()).SerializeToString())


@dataclass
class Stack:
    workdir: Path
    redis_url: str
    sink: OtlpSink
    token: str
    grpc_request: Path  # the file h2load posts: one framed GetItemRequest

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def grpc_headers(self) -> dict[str, str]:
        return {"content-type": "application/grpc", "te": "trailers", **self.auth}


def start_redis(children: Children, workdir: Path) -> str:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    children.start("redis-server", [*argv, "--dir", str(workdir)], clean_environment(), workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    try:
        wait_until(lambda: _pings(client), timeout_s=10, what="redis-server to answer PING")
    finally:
        client.close()
    return url


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def mint_token(env: dict[str, str]) -> str:
    argv = [sys.executable, "-m", "app", "token", "--sub", "bench", "--scope", "read write"]
    done = subprocess.run(
        [*argv, "--ttl", str(TOKEN_TTL_S)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BenchFailure(f"python -m app token failed:\n{done.stderr}")
    return done.stdout.strip()


def open_stack(children: Children, workdir: Path) -> Stack:
    redis_url = start_redis(children, workdir)
    sink_argv = [sys.executable, "-m", "bench.otlp_sink"]
    sink_child = children.start("otlp-sink", sink_argv, bench_environment(), workdir / "sink.log", piped=True)
    frame = workdir / "get-item.grpc"
    frame.write_bytes(grpc_frame(pb.GetItemRequest(key=ITEM_KEY).SerializeToString()))
    token = mint_token(app_environment(workdir, redis_url))
    return Stack(workdir, redis_url, OtlpSink(sink_child), token, frame)
