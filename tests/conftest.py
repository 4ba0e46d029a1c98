"""Shared fixtures: free ports and a real redis-server per test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent

# The service samples 1 trace in 10 by default; tests that assert on spans need every one of them.
# (Processes the tests start get their environment explicitly, see tests/e2e/conftest.py.)
os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_on")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, *, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}" + (f": {last_exc!r}" if last_exc else "")
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    try:
        wait_until(client.ping, timeout=10, message="redis-server to answer PING")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis, flushed before each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def dev_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a dev-mode process whose dev keys live in this test's tmp dir."""
    env = dict(os.environ)
    env.update({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(tmp_path / "dev-secrets.json")})
    return env
