"""A user's own gunicorn app on the platform distro: 2 workers, JSON logs in traces, /metrics summed.

The app below knows nothing of OpenTelemetry; its gunicorn config adds the distro's three calls
(docs/telemetry.md, "Your own gunicorn app"): JSON logging in the master, `start_worker()` after fork,
and the /metrics files' bookkeeping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e

APP = """
import logging
import flask
from app.telemetry.prometheus_bridge import render_metrics

app = flask.Flask("probe")
log = logging.getLogger("probe")

@app.get("/v1/items/<key>")
def get_item(key):
    log.info("served", extra={"item": key, "request_id": flask.request.headers.get("X-Request-ID", "")})
    return {"key": key}

@app.get("/metrics")
def metrics():
    body, content_type = render_metrics()
    return flask.Response(body, content_type=content_type)
"""

CONFIG = """
from app.gunicorn_server import JsonErrorLogger
from app.telemetry.distro import start_worker
from app.telemetry.logging import configure_logging
from app.telemetry.prometheus_bridge import mark_worker_dead, prepare_multiproc_dir

bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gthread"
threads = 4
keepalive = 0
graceful_timeout = 10
control_socket_disable = True  # the default path is one per host: parallel servers would share it
logger_class = JsonErrorLogger

def on_starting(server):
    configure_logging()
    prepare_multiproc_dir({multiproc!r})

def post_fork(server, worker):
    worker.telemetry = start_worker()

def worker_exit(server, worker):
    worker.telemetry.shutdown(5.0)

def child_exit(server, worker):
    mark_worker_dead(worker.pid)
"""


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.output = tmp_path / "gunicorn.out"
        (tmp_path / "probe_app.py").write_text(APP)
        config = tmp_path / "gunicorn_conf.py"
        config.write_text(CONFIG.format(port=self.port, multiproc=str(tmp_path / "multiproc")))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
        env.update(OTEL_SERVICE_NAME="probe", OTEL_TRACES_SAMPLER="always_on")
        env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(config), "probe_app:app"],
            stdout=self.output.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )

    def get(self, path: str, request_id: str = "") -> bytes:
        headers = {"X-Request-ID": request_id} if request_id else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return bytes(response.read())

    def samples(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for line in self.get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    def lines(self) -> list[dict[str, object]]:
        parsed = []
        for line in self.output.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                parsed.append({"unparsed": line})
        return parsed

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        wait_until(lambda: running.get("/v1/items/warmup"), timeout=30, message="gunicorn to serve")
        yield running
    finally:
        running.stop()


def count(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def test_two_workers_one_scrape_json_logs_and_dead_worker_gauges(server: Server) -> None:
    threads = "process_thread_count"
    wait_until(
        lambda: len([k for k in server.samples() if k.startswith(threads)]) >= 1, message="workers to export"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: server.get(f"/v1/items/k{i}", f"req-{i}"), range(40)))
    route = (
        'http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200"'
    )
    wait_until(
        lambda: count(server.samples(), route) == 41, message="/metrics to count every request exactly once"
    )  # 40 + the warm-up; /metrics itself is excluded

    def app_lines() -> list[dict[str, object]]:
        return [line for line in server.lines() if line.get("logger") == "probe"]

    def our_lines() -> dict[str, dict[str, object]]:
        return {
            str(line["request_id"]): line
            for line in app_lines()
            if str(line["request_id"]).startswith("req-")
        }

    ours = wait_until(lambda: (found := our_lines()) and len(found) == 40 and found, message="40 app lines")
    for rid, line in ours.items():
        assert line["item"] == f"k{rid[4:]}" and line["message"] == "served"
        assert re.fullmatch(r"[0-9a-f]{32}", str(line["trace_id"])) and line["service"] == "probe"
    assert all("unparsed" not in line for line in server.lines()), "every stdout line is JSON"

    def booted() -> set[int]:
        found = (
            re.search(r"Booting worker with pid: (\d+)", str(line.get("message", "")))
            for line in server.lines()
        )
        return {int(match[1]) for match in found if match}

    original = booted()
    assert len(original) == 2
    worker_pids = {int(str(line["pid"])) for line in ours.values()}  # served (and counted) item requests
    assert worker_pids <= original
    victim = next(iter(worker_pids))
    os.kill(victim, signal.SIGKILL)
    multiproc = server.output.parent / "multiproc"
    wait_until(
        lambda: not (multiproc / f"gauge_livesum_{victim}.db").exists(),
        message="child_exit to drop its gauges",
    )
    assert (multiproc / f"histogram_{victim}.db").exists()  # its counts stay
    # The killed worker's live gauges are gone, its counts stay.
    wait_until(lambda: count(server.samples(), route) == 41, message="the dead worker's counts to stay")

    # Stop only once the replacement serves: a worker signalled while still booting misses SIGTERM and
    # holds the shutdown for gunicorn's whole graceful timeout (a gunicorn race, not ours).
    def replacement_serves() -> bool:
        server.get("/v1/items/ping", "ping")
        return any(int(str(line["pid"])) not in original for line in app_lines())

    wait_until(replacement_serves, message="the replacement worker to serve")
