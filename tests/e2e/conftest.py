"""Real processes: the API under gunicorn with 2 workers, the upstream, redis-server, all on free ports."""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.rpc import client
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc
from tests.conftest import ROOT, GiveUp, free_port, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def instance(self) -> str:
        return self.headers.get("x-instance-id", "")


class LogTail:
    """Collects a child's merged stdout/stderr lines on a thread, so pipes never fill up.

    Keeps the last `limit` lines; `mark()` and `since(mark)` read what arrived after a point in time.
    """

    def __init__(self, stream: Any, limit: int = 100_000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=limit)
        self._total = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._total += 1

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def mark(self) -> int:
        with self._lock:
            return self._total

    def since(self, mark: int) -> list[str]:
        with self._lock:
            new = self._total - mark
            return list(self._lines)[-new:] if new > 0 else []

    def json_records(self, lines: list[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.lines if lines is None else lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the pump to reach the end of the stream (after the process exited)."""
        self._thread.join(timeout)

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: LogTail
    port: int
    grpc_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 10.0,
        connection: http.client.HTTPConnection | None = None,
    ) -> Response:
        """One request on a fresh connection, so the kernel may hand it to any worker; or on `connection`
        (from `connect()`), kept alive, so the worker that accepted it serves it."""
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = {**({} if connection else {"Connection": "close"}), **(headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            if connection is None:
                conn.close()

    def connect(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """A keep-alive connection for `request(..., connection=)`; the caller closes it."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def rpc(
        self,
        method: str,
        request: Any,
        token: str | None,
        timeout: float = 10.0,
        *,
        wait_for_ready: bool | None = None,
    ) -> tuple[Any, str]:
        """One RPC on a fresh channel (a fresh connection, so SO_REUSEPORT may pick any worker) with the
        client contract of app.rpc.client; returns the response and the instance id of the worker that
        served it."""
        with client.channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = pb_grpc.PlatformServiceStub(channel)
            metadata = [("authorization", f"Bearer {token}")] if token else []
            response, call = getattr(stub, method).with_call(
                request, metadata=metadata, timeout=timeout, wait_for_ready=wait_for_ready
            )
            return response, dict(call.initial_metadata()).get("x-instance-id", "")

    def check_alive(self) -> None:
        """Give up a wait at once, with the log, if the process has exited."""
        if self.popen.poll() is not None:
            self.log.join()
            raise GiveUp(f"{self.name} exited with {self.popen.returncode}:\n{self.log.text()}")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(
    name: str,
    args: list[str],
    env: dict[str, str],
    port: int,
    grpc_port: int = 0,
    launcher: tuple[str, ...] = (),
) -> Proc:
    """`python -m app <args>`, or `<launcher> python -m app <args>` (e.g. opentelemetry-instrument)."""
    popen = subprocess.Popen(
        [*launcher, sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as in a terminal (tests send it Ctrl-C)
    )
    assert popen.stdout is not None
    return Proc(name, popen, LogTail(popen.stdout), port, grpc_port, env)


def base_env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    env.update(
        {
            "APP_ENV": "dev",
            "DEV_SECRETS_FILE": str(tmp_path / "dev-secrets.json"),
            "REDIS_URL": redis_url,
            "BIND_HOST": "127.0.0.1",
            "GRACEFUL_TIMEOUT_S": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_upstream(env: dict[str, str]) -> Proc:
    port = free_port()
    env = {**env, "UPSTREAM_PORT": str(port)}
    proc = spawn("upstream", ["upstream"], env, port)

    def healthy() -> bool:
        proc.check_alive()
        return proc.request("GET", "/healthz").status == 200

    wait_until(healthy, timeout=20, message=lambda: f"upstream on {port} to be healthy\n{proc.log.text()}")
    return proc


def start_api(
    env: dict[str, str], upstream: Proc, workers: int = 2, *, launcher: tuple[str, ...] = (), **extra: str
) -> Proc:
    port, grpc_port = free_port(), free_port()
    metrics_dir = Path(env["DEV_SECRETS_FILE"]).parent / f"metrics-{port}"
    metrics_dir.mkdir()
    env = {
        **env,
        "HTTP_PORT": str(port),
        "GRPC_PORT": str(grpc_port),
        "WEB_CONCURRENCY": str(workers),
        "UPSTREAM_URL": f"http://127.0.0.1:{upstream.port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **extra,
    }
    proc = spawn("api", ["serve"], env, port, grpc_port, launcher)

    def ready_everywhere() -> bool:
        # Every worker ready: readiness answered 200 by as many distinct workers as configured.
        proc.check_alive()
        seen = {r.instance for r in (proc.request("GET", "/readyz") for _ in range(20)) if r.status == 200}
        return len(seen) >= workers

    wait_until(
        ready_everywhere,
        timeout=30,
        message=lambda: f"{workers} API workers to be ready on {port}/{grpc_port}\n{proc.log.text()}",
    )
    return proc


def start_jobs(env: dict[str, str], tmp_path: Path, processes: int = 2) -> Proc:
    """`python -m app jobs`, with a short visibility timeout and backoff (jobs are reclaimed and retried
    within seconds), ready once every worker process is."""
    port = free_port()
    metrics_dir = tmp_path / f"metrics-{port}"
    metrics_dir.mkdir()
    env = {
        **env,
        "JOBS_PORT": str(port),
        "JOBS_PROCESSES": str(processes),
        "JOBS_CONCURRENCY": "1",
        "JOBS_VISIBILITY_TIMEOUT_S": "2",
        "JOBS_MAX_ATTEMPTS": "3",
        "JOBS_RETRY_BASE_S": "0.05",
        "JOBS_RETRY_CAP_S": "0.2",
        "DRAIN_DELAY_S": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    proc = spawn("jobs", ["jobs"], env, port)

    def ready() -> bool:
        proc.check_alive()
        return len(proc.worker_pids()) == processes and proc.request("GET", "/readyz").status == 200

    wait_until(ready, timeout=30, message=lambda: f"the jobs deployment to be ready\n{proc.log.text()}")
    return proc


def mint(env: dict[str, str], sub: str, scope: str = "read write admin", ttl: int = 600) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app", "token", "--sub", sub, "--scope", scope, "--ttl", str(ttl)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


@dataclass
class Stack:
    env: dict[str, str]
    upstream: Proc
    api: Proc
    admin_token: str

    def token(self, sub: str, scope: str = "read write admin") -> str:
        return mint(self.env, sub, scope)


@pytest.fixture(scope="module")
def stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Upstream + API (2 workers), shared by the tests of one module."""
    tmp = tmp_path_factory.mktemp("stack")
    env = base_env(redis_server, tmp)
    upstream = start_upstream(env)
    api = None
    try:
        api = start_api(env, upstream)
        yield Stack(env, upstream, api, mint(env, "e2e-admin"))
    finally:
        if api is not None:
            api.stop()
        upstream.stop()
