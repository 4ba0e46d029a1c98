"""Telemetry from the real deployment: OTLP to a receiver started here, /metrics aggregated over workers."""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.rpc.platform.v1 import platform_pb2 as pb
from tests.conftest import free_port, wait_until
from tests.e2e.conftest import Proc, base_env, mint, start_api, start_upstream
from tests.e2e.otlp_receiver import OtlpReceiver, Span

pytestmark = pytest.mark.e2e

FAST_EXPORT = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    "OTEL_BLRP_SCHEDULE_DELAY": "200",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    "OTLP_ACCESS_LOGS": "true",  # so that every request leaves a log record to find by trace id
}


@dataclass
class OtlpStack:
    receiver: OtlpReceiver
    api: Proc
    upstream: Proc
    token: str


@pytest.fixture(scope="module")
def otlp_stack(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtlpStack]:
    receiver = OtlpReceiver().start()
    env = base_env(
        redis_server,
        tmp_path_factory.mktemp("otlp"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        RATE_LIMIT="1000000/second",  # the telemetry is the subject here, not the limiter
        **FAST_EXPORT,
    )
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    try:
        yield OtlpStack(receiver, api, upstream, mint(env, "otlp-user"))
    finally:
        api.stop()
        upstream.stop()
        receiver.stop()


def test_every_worker_exports_spans_metrics_and_logs(otlp_stack: OtlpStack) -> None:
    rx = otlp_stack.receiver.received
    served: set[str] = set()

    def spread() -> bool:
        r = otlp_stack.api.request("GET", "/v1/items/missing", token=otlp_stack.token)
        served.add(r.instance)
        otlp_stack.api.rpc("GetQuote", pb.GetQuoteRequest(symbol="OTLP"), otlp_stack.token)
        return len(served) >= 2

    wait_until(spread, timeout=20, message="requests on both workers")

    def api_instances(items: list[dict[str, object]]) -> set[object]:
        return {res.get("service.instance.id") for res in items if res.get("service.name") == "platform-api"}

    wait_until(
        lambda: len(api_instances([s.resource for s in rx.spans])) >= 2,
        timeout=20,
        message="spans from 2 distinct service.instance.id",
    )
    wait_until(
        lambda: len(api_instances([res for res, _ in rx.metrics])) >= 2,
        timeout=20,
        message="metrics from 2 distinct service.instance.id",
    )
    # The instance ids the service reports in X-Instance-Id are the ones on its telemetry.
    assert served <= api_instances([s.resource for s in rx.spans])
    trace_id = uuid.uuid4().hex
    otlp_stack.api.request(
        "GET",
        "/v1/items/missing",
        token=otlp_stack.token,
        headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},
    )
    wait_until(
        lambda: any(record.trace_id == trace_id for record in rx.logs),
        timeout=20,
        message="a log record carrying the request's trace id",
    )
    expected = {"http.server.request.duration", "rpc.server.call.duration", "platform.eventloop.delay"}
    wait_until(
        lambda: expected <= {name for _, name in rx.metrics}, timeout=20, message=f"OTLP metrics {expected}"
    )


def test_one_trace_runs_from_client_through_http_to_redis_and_upstream(otlp_stack: OtlpStack) -> None:
    trace_id = uuid.uuid4().hex
    parent = uuid.uuid4().hex[:16]
    r = otlp_stack.api.request(
        "GET",
        "/v1/quotes/TRCE",
        token=otlp_stack.token,
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    assert r.status == 200
    rx = otlp_stack.receiver.received

    def trace_complete() -> list[Span] | None:
        # The API's server span ends last (after its client span), so it may arrive in a later batch.
        spans = [s for s in rx.spans if s.trace_id == trace_id]
        kinds = {(s.resource.get("service.name"), s.kind) for s in spans}  # kind 2 = SERVER, 3 = CLIENT
        wanted = {("platform-api", 2), ("platform-api", 3), ("quotes-upstream", 2)}
        return spans if wanted <= kinds else None

    spans = wait_until(trace_complete, timeout=20, message="the trace to reach the upstream's spans")
    server = [s for s in spans if s.kind == 2 and s.resource.get("service.name") == "platform-api"]
    assert server and server[0].parent_span_id == parent
    upstream_server = [s for s in spans if s.resource.get("service.name") == "quotes-upstream"]
    assert upstream_server, "the upstream continued the trace (W3C traceparent over HTTP)"


def test_metrics_endpoint_counts_exactly_n_requests_over_all_workers(otlp_stack: OtlpStack) -> None:
    # Only this test sends DELETEs, so no late export from another test can land in the count.
    labels = ('http_request_method="DELETE"', 'http_route="/v1/items/<key>"')

    def count() -> float:
        text = otlp_stack.api.request("GET", "/metrics").body.decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("http_server_request_duration_seconds_count{") and all(
                x in line for x in labels
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    assert count() == 0
    served: set[str] = set()
    n = 40
    # Two keep-alive connections, which the balanced accept puts on different workers.
    connections = otlp_stack.api.connect(), otlp_stack.api.connect()
    try:
        for i in range(n):
            r = otlp_stack.api.request(
                "DELETE", f"/v1/items/never-{i}", token=otlp_stack.token, connection=connections[i % 2]
            )
            assert r.status == 404
            served.add(r.instance)
    finally:
        for conn in connections:
            conn.close()
    assert len(served) == 2, "the N requests were spread over both workers"
    wait_until(lambda: count() == n, timeout=15, message=f"/metrics to count exactly {n} (now {count()})")


def test_killed_worker_gauges_leave_metrics(otlp_stack: OtlpStack) -> None:
    def workers_gauge() -> float:
        text = otlp_stack.api.request("GET", "/metrics").body.decode()
        match = re.search(r"^platform_workers (\S+)$", text, re.M)
        return float(match.group(1)) if match else -1.0

    wait_until(lambda: workers_gauge() == 2.0, timeout=15, message="platform_workers == 2")
    victim = otlp_stack.api.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in otlp_stack.api.worker_pids() and len(otlp_stack.api.worker_pids()) == 2,
        timeout=30,
        message="the worker to be replaced",
    )
    # Without child_exit marking it dead, the killed worker's 1 would still be summed in (3).
    wait_until(lambda: workers_gauge() == 2.0, timeout=15, message="platform_workers back to 2, not 3")
    metrics_dir = otlp_stack.api.env["PROMETHEUS_MULTIPROC_DIR"]
    assert not [
        f for f in os.listdir(metrics_dir) if f.startswith("gauge_live") and f.endswith(f"_{victim}.db")
    ]


def test_unreachable_collector_slows_nothing_and_logs_once(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    closed = free_port()  # nothing listens here
    env = base_env(
        redis_server,
        tmp_path_factory.mktemp("otlp-down"),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
        RATE_LIMIT="1000000/second",  # 200 requests at once: the collector is the subject, not the limiter
        **FAST_EXPORT,
    )
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    try:
        token = mint(env, "otlp-down")
        statuses = [api.request("GET", "/v1/items/nothing", token=token).status for _ in range(200)]
        assert statuses == [404] * 200
        text = api.log.text()
        export_errors = [
            line
            for line in text.splitlines()
            if "export" in line.lower()
            and ("fail" in line.lower() or "error" in line.lower() or "unavailable" in line.lower())
        ]
        # At most one report per signal per worker per interval: far fewer than one per request.
        assert len(export_errors) <= 12, export_errors[:20]
        assert "Traceback" not in text
    finally:
        api.stop()
        upstream.stop()


def test_opentelemetry_instrument_gives_exactly_the_telemetry_of_the_plain_start(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`python -m app serve` and `opentelemetry-instrument python -m app serve`, side by side, exporting to
    one receiver: the same telemetry, from the workers only, each request's server span exactly once."""
    receiver = OtlpReceiver().start()
    env = base_env(
        redis_server,
        tmp_path_factory.mktemp("two-starts"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        **FAST_EXPORT,
    )
    upstream = start_upstream(env)
    # As the image sets them: opentelemetry-distro's distro and configurator are installed too.
    distro = {"OTEL_PYTHON_DISTRO": "platform", "OTEL_PYTHON_CONFIGURATOR": "platform"}
    launcher = (str(Path(sys.executable).parent / "opentelemetry-instrument"),)
    deployments = {
        "plain": start_api(env, upstream),
        "instrumented": start_api({**env, **distro}, upstream, launcher=launcher),
    }
    try:
        token = mint(env, "two-starts")
        sent: dict[str, dict[str, set[str]]] = {}  # deployment -> trace id -> instances that served it
        served: dict[str, set[str]] = {name: set() for name in deployments}
        for name, api in deployments.items():
            sent[name] = {}

            def spread(api: Proc = api, name: str = name) -> bool:
                trace_id = uuid.uuid4().hex
                headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
                r = api.request("GET", "/v1/items/two-starts", token=token, headers=headers)
                assert r.status == 404
                sent[name][trace_id] = {r.instance}
                served[name].add(r.instance)
                api.rpc("GetQuote", pb.GetQuoteRequest(symbol="TWO"), token)
                return len(served[name]) >= 2

            wait_until(spread, timeout=30, message=f"{name}: requests on both workers")
        rx = receiver.received

        def api_resources(instances: set[str]) -> list[dict[str, object]]:
            every = (
                [s.resource for s in rx.spans]
                + [res for res, _ in rx.metrics]
                + [record.resource for record in rx.logs]
            )
            return [r for r in every if r.get("service.instance.id") in instances]

        def server_spans(trace_id: str) -> list[Span]:
            return [s for s in rx.spans if s.trace_id == trace_id and s.kind == 2]

        wanted = {"http.server.request.duration", "rpc.server.call.duration"}
        for name, api in deployments.items():
            instances = served[name]
            assert len(instances) >= 2, f"{name}: 2 workers, each with its own service.instance.id"
            wait_until(
                lambda name=name: all(server_spans(t) for t in sent[name]),
                timeout=30,
                message=f"{name}: every request's server span",
            )
            wait_until(
                lambda instances=instances: (
                    wanted <= {m for res, m in rx.metrics if res.get("service.instance.id") in instances}
                ),
                timeout=30,
                message=f"{name}: {wanted} over OTLP",
            )
            for trace_id in sent[name]:
                (span,) = server_spans(trace_id)  # exactly once
                assert span.name == "GET /v1/items/<key>"
                assert span.resource.get("service.instance.id") in instances
            resources = api_resources(instances)
            assert {r.get("service.name") for r in resources} == {"platform-api"}
            pids = {r.get("process.pid") for r in resources}
            assert api.popen.pid not in pids and None not in pids, f"{name}: only workers export"
            assert len(pids) >= 2
        # The same telemetry from both starts: metric names, span names and attribute keys. (Only the first
        # deployment to use the shared Redis loads the rate limiter's Lua script: SCRIPT LOAD is left out.)
        by_start = {name: served[name] for name in deployments}
        metric_names = {
            name: {m for res, m in rx.metrics if res.get("service.instance.id") in ids}
            for name, ids in by_start.items()
        }
        assert metric_names["plain"] == metric_names["instrumented"]

        def scraped(api: Proc) -> set[str]:
            lines = api.request("GET", "/metrics").body.decode().splitlines()
            return {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}

        # Each worker writes its /metrics files every second: compare once both have caught up.
        wait_until(
            lambda: (
                "http_server_request_duration_seconds_count" in scraped(deployments["plain"])
                and scraped(deployments["plain"]) == scraped(deployments["instrumented"])
            ),
            timeout=15,
            message=lambda: (
                f"the same /metrics: {scraped(deployments['plain']) ^ scraped(deployments['instrumented'])}"
            ),
        )
        shapes = {
            name: {
                (s.name, s.kind, frozenset(s.attributes) - {"client.address", "server.port", "net.peer.port"})
                for s in rx.spans
                if s.resource.get("service.instance.id") in ids and s.name != "SCRIPT LOAD"
            }
            for name, ids in by_start.items()
        }
        assert shapes["plain"] == shapes["instrumented"]
        # Log records carry the trace ids of their requests, from both starts.
        logged = {record.trace_id for record in rx.logs if record.trace_id.strip("0")}
        for name in deployments:
            assert logged & set(sent[name]), f"{name}: log records carry trace ids"
    finally:
        for api in deployments.values():
            api.stop()
        upstream.stop()
        receiver.stop()
