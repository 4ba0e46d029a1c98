"""Debian's real Prometheus scrapes the real service and evaluates our rule files.

After a load that exercises every operation (and the ways they fail), every dashboard panel that reads
service metrics returns data, and jobs that ran out of attempts fire the dead-letter alert; when the upstream
is made to fail, the circuit-breaker alert fires.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis

from app.domain.items import ITEM_PREFIX
from app.rpc.platform.v1 import platform_pb2 as pb
from tests.conftest import ROOT, free_port, wait_until
from tests.e2e.conftest import Proc, base_env, mint, start_api, start_jobs, start_upstream
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.stack.panel_queries import panel_queries
from tests.stack.prometheus_config import JOBS_JOB, write_scrape_path_config

pytestmark = pytest.mark.e2e

BLOCKED = "prom-blocked"  # an item whose imports always fail: see `observed`


@dataclass
class Prometheus:
    url: str
    popen: subprocess.Popen[bytes]

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.get("/api/v1/query", query=expr)["result"]
        return result


@dataclass
class Observed:
    api: Proc
    upstream: Proc
    jobs: Proc
    prometheus: Prometheus
    token: str
    admin: str


@pytest.fixture(scope="module")
def observed(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus); .ci/run installs it")
    tmp = tmp_path_factory.mktemp("prom")
    # The production profile: OTLP export on (to a receiver of the test's own), so that the SDK's own
    # export metrics exist too. A small pool queue and rate limit so that load shows rejections too
    # (their panels need data).
    receiver = OtlpReceiver().start()
    env = base_env(
        redis_server,
        tmp,
        POOL_QUEUE_SIZE="2",
        RATE_LIMIT="150/second",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_METRIC_EXPORT_INTERVAL="1000",
    )
    # An item a newer writer holds (a fencing token no attempt has): imports of it retry, then die, so the
    # retry and dead-letter panels have data.
    client = redis.Redis.from_url(redis_server, socket_timeout=2)
    client.hset(f"{ITEM_PREFIX}{BLOCKED}", mapping={"value": "0", "version": 1, "fence": 10**12})
    client.close()
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    jobs = start_jobs(env, tmp)
    port = free_port()
    config = write_scrape_path_config(
        tmp,
        api=f"127.0.0.1:{api.port}",
        upstream=f"127.0.0.1:{upstream.port}",
        jobs=f"127.0.0.1:{jobs.port}",
    )
    popen = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", popen)
    try:
        wait_until(lambda: prom.get("/api/v1/status/runtimeinfo"), timeout=30, message="prometheus up")
        yield Observed(api, upstream, jobs, prom, mint(env, "prom-load"), mint(env, "prom-admin", "admin"))
    finally:
        popen.terminate()
        popen.wait(10)
        jobs.stop()
        api.stop()
        upstream.stop()
        receiver.stop()


def drive_load(o: Observed, seconds: float) -> None:
    """A mix of every operation over both transports, with the failures the dashboards show."""
    t = o.token
    deadline = time.monotonic() + seconds
    b64 = "c2VjcmV0"

    def http_round(i: int) -> None:
        o.api.request("PUT", f"/v1/items/load-{i % 20}", {"value": i}, token=t)
        o.api.request("GET", f"/v1/items/load-{i % 20}", token=t)
        o.api.request("GET", "/v1/items/absent", token=t)
        o.api.request("GET", "/v1/quotes/LOAD", token=t)
        o.api.request("POST", "/v1/crypto/encrypt", {"plaintext": b64}, token=t)
        o.api.request("POST", "/v1/crypto/sign", {"message": b64}, token=t)
        o.api.request("POST", "/v1/compute/hash", {"password": b64, "params": {"n": 1024}}, token=t)
        o.api.request("DELETE", f"/v1/items/load-{(i + 7) % 20}", token=t)
        o.api.request("POST", "/v1/jobs", {"kind": "primes", "params": {"limits": [1000 + i]}}, token=t)
        if i % 8 == 0:
            o.api.request("POST", "/v1/jobs", {"kind": "import", "params": {"items": {BLOCKED: i}}}, token=t)

    def grpc_round(i: int) -> None:
        calls = [
            ("GetQuote", pb.GetQuoteRequest(symbol="LOAD")),
            ("Encrypt", pb.EncryptRequest(plaintext=b"secret")),
            ("GetItem", pb.GetItemRequest(key="absent")),  # NOT_FOUND is part of the mix
        ]
        for method, request in calls:
            # Errors (and the odd rate-limit rejection) are what some panels show.
            with contextlib.suppress(grpc.RpcError):
                o.api.rpc(method, request, t)

    def burst() -> None:
        # Saturate the pool (queue of 2) and the rate limit once, so rejections are counted.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda _: o.api.request("POST", "/v1/compute/primes", {"limit": 2_000_000}, token=t),
                    range(8),
                )
            )
        for _ in range(200):
            if o.api.request("GET", "/v1/items/absent", token=t).status == 429:
                break

    burst()
    i = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            list(pool.map(http_round, range(i, i + 4)))
            grpc_round(i)
            i += 4


@pytest.mark.timeout(420)
def test_every_service_panel_has_data_and_the_dead_letter_and_breaker_alerts_fire(observed: Observed) -> None:
    drive_load(observed, seconds=25)
    queries = [q for q in panel_queries({"__rate_interval": "30s", "__range": "5m"}) if q.source == "service"]
    assert len(queries) > 20

    def empty_panels() -> list[str]:
        return [
            f"{q.dashboard_uid} / {q.panel_title}: {q.expr}"
            for q in queries
            if not observed.prometheus.query(q.expr)
        ]

    # Scrapes happen every second; give the last of the load a few scrapes to land.
    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = empty_panels()
        return not missing

    try:
        # Chained recording rules (ratios over 6h..30d built on 5m rates) need a few evaluation rounds.
        wait_until(all_have_data, timeout=90, interval=1, message="every service panel to have data")
    except AssertionError:
        pytest.fail("panels without data:\n" + "\n".join(missing))

    # The load's imports of BLOCKED ran out of attempts: dead letters, which alert at once (no `for`).
    def firing(alertname: str, **labels: str) -> dict[str, Any] | None:
        return next(
            (
                a
                for a in observed.prometheus.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == alertname
                and a["state"] == "firing"
                and labels.items() <= a["labels"].items()
            ),
            None,
        )

    dead = wait_until(
        lambda: firing("PlatformJobsDeadLettered", job=JOBS_JOB),
        timeout=60,
        interval=0.5,
        message="PlatformJobsDeadLettered firing",
    )
    assert dead["annotations"]["runbook_url"].endswith("#platformjobsdeadlettered")

    # Make the upstream fail while quote traffic continues; the alert's `for: 1m` must elapse.
    r = observed.upstream.request("POST", "/chaos", {"error_rate": 1.0, "ttl_s": 600}, token=observed.admin)
    assert r.status == 200

    def breaker_alert_firing() -> bool:
        observed.api.request("GET", "/v1/quotes/LOAD", token=observed.token)
        return firing("PlatformCircuitBreakerOpen", name="upstream") is not None

    try:
        wait_until(
            breaker_alert_firing, timeout=180, interval=0.5, message="PlatformCircuitBreakerOpen firing"
        )
    finally:
        observed.upstream.request("POST", "/chaos", {"reset": True}, token=observed.admin)
    alert = next(
        a
        for a in observed.prometheus.get("/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == "PlatformCircuitBreakerOpen"
    )
    assert alert["labels"]["severity"]
    assert alert["annotations"]["runbook_url"].endswith("#platformcircuitbreakeropen")


def test_rule_files_load_without_errors(observed: Observed) -> None:
    groups = observed.prometheus.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules, "Prometheus loaded our rule files"
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
    assert not unhealthy, unhealthy


def trip_breaker_once(o: Observed) -> None:
    """Make the upstream fail until some worker's breaker changed state, then heal it."""

    def transitioned() -> bool:
        o.api.request("GET", "/v1/quotes/TRIP", token=o.token)
        return "platform_circuit_breaker_transitions_total{" in o.api.request("GET", "/metrics").body.decode()

    if transitioned():
        return
    assert (
        o.upstream.request("POST", "/chaos", {"error_rate": 1.0, "ttl_s": 120}, token=o.admin).status == 200
    )
    try:
        wait_until(transitioned, timeout=60, interval=0.2, message="a breaker transition")
    finally:
        o.upstream.request("POST", "/chaos", {"reset": True}, token=o.admin)


def service_metric_names() -> dict[str, str]:
    """Prometheus name -> OTel name, from the service table of docs/telemetry.md (the contract)."""
    rows: dict[str, str] = {}
    header: list[str] | None = None
    for line in (ROOT / "docs" / "telemetry.md").read_text().splitlines():
        cells = (
            [c.strip().strip("`") for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        )
        if not cells:
            header = None
            continue
        if header is None:
            header = cells
            continue
        if "OTel name" in header and "Prometheus name" in header and not set(cells[0]) <= {"-"}:
            rows[cells[header.index("Prometheus name")]] = cells[header.index("OTel name")]
    return rows


def exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family + "_total" if kind == "counter" and not family.endswith("_total") else family)
    return names


def test_metrics_match_the_contract_both_ways(observed: Observed) -> None:
    """After the load above: everything the contract lists is emitted, and nothing else is."""
    contract = service_metric_names()
    assert len(contract) > 20
    trip_breaker_once(observed)  # transitions are counted only once one happened
    exposed = exposed_names(observed.api.request("GET", "/metrics").body.decode())
    jobs = exposed_names(observed.jobs.request("GET", "/metrics").body.decode())
    assert sorted(set(contract) - exposed - jobs) == [], "listed in docs/telemetry.md but not emitted"
    assert sorted(exposed - set(contract)) == [], "emitted but not listed in docs/telemetry.md"
    assert sorted(jobs - set(contract)) == [], "emitted by the jobs deployment but not listed"
    # The upstream is a second service with the same instrumentation; it emits only listed names too.
    upstream = exposed_names(observed.upstream.request("GET", "/metrics").body.decode())
    assert upstream
    assert sorted(upstream - set(contract)) == []
