"""Starting what is measured: the real service (`python -m app serve`) and the bare hello app, both under
gunicorn with 2 gthread workers x 8 threads; and talking plain HTTP to them.

The service gets the settings a developer would run it with (README, "Run it locally") on private ports,
redis and dev keys, RATE_LIMIT raised so that nothing is refused, and each variant's environment on top.
It runs without the quotes upstream: the item read never calls it, and readiness does not wait for it.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from bench import procfs
from bench.deployment import HTTP_THREADS, WORKERS
from bench.processes import BenchFailure, Child, Children, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
RATE_LIMIT = "1000000/second"
ITEM_KEY = "bench"
ITEM_PATH = f"/v1/items/{ITEM_KEY}"
ITEM_VALUE = {"hello": "world", "n": 42}
HELLO_PATH = "/hello/bench"
START_TIMEOUT_S = 60.0
# What the service reads; none of it may leak from the caller's shell into a measurement.
SCRUBBED_PREFIXES = ("OTEL_", "PROMETHEUS_")
SCRUBBED = frozenset(name.upper() for name in Settings.model_fields)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A started gunicorn master and the ports its workers serve."""

    name: str
    child: Child
    http_port: int
    grpc_port: int | None = None

    def workers(self) -> list[int]:
        return procfs.children(self.child.pid)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> Response:
        """One request on a fresh connection, so that any worker may answer it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def metrics_text(self) -> str:
        """The service's /metrics, all workers summed; empty where there is none (the bare app)."""
        try:
            resp = self.request("GET", "/metrics")
        except OSError as exc:
            self.check_alive()
            raise BenchFailure(f"{self.name}: GET /metrics: {exc}") from exc
        return resp.body.decode() if resp.status == 200 else ""

    def check_alive(self) -> None:
        if not self.child.alive():
            raise BenchFailure(
                f"{self.name} exited with {self.child.popen.returncode}{self.stopped_from_outside()}"
            )

    def stopped_from_outside(self) -> str:
        """A hint when gunicorn logged a signal the bench did not send (it sends one only to stop it)."""
        if any(f"Handling signal: {s}" in self.child.log_tail(200) for s in ("term", "int", "quit")):
            return (
                ": a signal from outside the bench stopped it (another process on this machine, e.g. "
                '`pkill -f "app serve"`); run the bench on a quiet machine'
            )
        return ""


def clean_environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(SCRUBBED_PREFIXES) and k.upper() not in SCRUBBED
    }


def bench_environment() -> dict[str, str]:
    """For the bench's own modules run as processes (the OTLP receiver, the bare hello app)."""
    return {**clean_environment(), "PYTHONPATH": str(ROOT)}


def app_environment(workdir: Path, redis_url: str) -> dict[str, str]:
    """What every `python -m app` process of the bench shares (dev keys in the bench's directory)."""
    return {
        **clean_environment(),
        "APP_ENV": "dev",
        "DEV_SECRETS_FILE": str(workdir / "dev-secrets.json"),
        "REDIS_URL": redis_url,
        "BIND_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


def start_service(
    children: Children, name: str, base_env: dict[str, str], variant_env: dict[str, str], workdir: Path
) -> Server:
    http_port, grpc_port = free_port(), free_port()
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    env = {
        **base_env,
        "HTTP_PORT": str(http_port),
        "GRPC_PORT": str(grpc_port),
        "WEB_CONCURRENCY": str(WORKERS),
        "HTTP_THREADS": str(HTTP_THREADS),
        "RATE_LIMIT": RATE_LIMIT,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **variant_env,
    }
    argv = [sys.executable, "-m", "app", "serve"]
    server = Server(name, children.start(name, argv, env, workdir / "server.log"), http_port, grpc_port)
    wait_until(
        lambda: _all_workers_ready(server),
        timeout_s=START_TIMEOUT_S,
        what=f"{WORKERS} ready workers of {name} (log: {workdir / 'server.log'})",
    )
    return server


def _all_workers_ready(server: Server) -> bool:
    server.check_alive()
    try:
        answers = [server.request("GET", "/readyz") for _ in range(4 * WORKERS)]
    except OSError:
        return False
    ready = {r.headers.get("x-instance-id") for r in answers if r.status == 200}
    return len(ready) >= WORKERS


def start_hello(children: Children, workdir: Path) -> Server:
    port = free_port()
    env = {**bench_environment(), "BENCH_BIND": f"127.0.0.1:{port}"}
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:bench.hello_gunicorn", "bench.hello_app:app"]
    server = Server("bare-hello", children.start("bare-hello", argv, env, workdir / "server.log"), port)

    def serving() -> bool:
        server.check_alive()
        try:
            ok = server.request("GET", HELLO_PATH).status == 200
        except OSError:
            return False
        return ok and len(server.workers()) == WORKERS

    wait_until(serving, timeout_s=START_TIMEOUT_S, what="the bare hello app to answer")
    return server


def ensure_item(server: Server, token: str) -> dict[str, object]:
    """The item every read fetches: PUT once (it has no TTL, so it stays in redis), then read back."""
    auth = {"Authorization": f"Bearer {token}"}
    got = server.request("GET", ITEM_PATH, auth)
    if got.status == 404:
        body = json.dumps({"value": ITEM_VALUE}).encode()
        put = server.request("PUT", ITEM_PATH, {**auth, "Content-Type": "application/json"}, body)
        if put.status != 200:
            raise BenchFailure(f"PUT {ITEM_PATH}: {put.status} {put.body!r}")
        got = server.request("GET", ITEM_PATH, auth)
    if got.status != 200:
        raise BenchFailure(f"GET {ITEM_PATH}: {got.status} {got.body!r}")
    item: dict[str, object] = json.loads(got.body)
    return item
