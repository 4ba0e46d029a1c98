"""Shared fixtures: free ports and a real redis-server per test session."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent

# The service samples 1 trace in 10 by default; tests that assert on spans need every one of them.
# (Processes the tests start get their environment explicitly, see tests/e2e/conftest.py.)
os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_on")
# What the platform distro sets in every worker; instrumentations read it once, at their first use.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
# prometheus_client picks its multiprocess mode when first imported, as in a worker (unit tests render it).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="platform-test-metrics-"))


# Ports are drawn below the kernel's ephemeral range (ip_local_port_range starts at 32768), so an
# outgoing connection of some other process cannot take one between our check and the server's bind,
# and never twice in one session, so two servers a test starts can never be handed the same port.
_PORT_RANGE = range(20_000, 32_000)
_handed_out: set[int] = set()
_rng = random.Random(os.getpid())


def free_port() -> int:
    """A port nothing listens on and that this session has not handed out before."""
    for _ in range(200):
        port = _rng.choice(_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


class GiveUp(AssertionError):
    """Raised by a `wait_until` predicate when waiting longer cannot help (e.g. the process died)."""


def wait_until(  # type: ignore[no-untyped-def]
    predicate,
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
):
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline.

    `message` may be a callable, evaluated only on failure (e.g. to include a process's log so far).
    A predicate raising `GiveUp` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except GiveUp:
            raise
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    text = message() if callable(message) else message
    raise AssertionError(
        f"timed out after {timeout}s waiting for {text}" + (f": {last_exc!r}" if last_exc else "")
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


class PrivateRedis:
    """A redis-server of this test's own, which the test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        try:
            wait_until(client.ping, timeout=10, message="private redis-server to answer PING")
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
