"""What is measured: the variants of the real service (one table of environments), the bare Flask baseline,
and how each variant proves that it is what it claims to be.

Every variant is `python -m app serve` with the same settings (bench.servers); only the environment below
differs. Two values are placeholders the bench fills in: RECEIVER is its local OTLP receiver
(bench.otlp_sink), NOWHERE a port on which nothing listens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bench.otlp_sink import Received
from bench.scrape import HTTP_DURATION, RPC_DURATION

Transport = Literal["http", "grpc"]
TRANSPORTS: tuple[Transport, ...] = ("http", "grpc")

RECEIVER = "<receiver>"
NOWHERE = "<nowhere>"

# The one table to change when a profile changes.
VARIANT_ENVIRONMENT: dict[str, dict[str, str]] = {
    # No telemetry. The endpoint is set anyway, so that "exports nothing" is checked, not assumed.
    "off": {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": RECEIVER},
    # The production profile the docs recommend: the distro's defaults, OTLP export on.
    "shipped": {"OTEL_EXPORTER_OTLP_ENDPOINT": RECEIVER},
    # `shipped` with contrib's Flask and gRPC server instrumentations instead of the platform's.
    "stock": {
        "OTEL_EXPORTER_OTLP_ENDPOINT": RECEIVER,
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "platform_flask,platform_grpc_aio_server",
    },
    # `shipped` while the collector is down.
    "shipped-endpoint-down": {"OTEL_EXPORTER_OTLP_ENDPOINT": NOWHERE},
    # The compose demo profile (compose.yaml): every trace kept, access lines over OTLP too.
    "demo": {
        "OTEL_EXPORTER_OTLP_ENDPOINT": RECEIVER,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTLP_ACCESS_LOGS": "true",
    },
    # `shipped` without a gRPC server instrumentation (no gRPC server spans): what gRPC's server spans
    # cost. Opt-in (--variants), not part of the default run.
    "shipped-no-rpc-spans": {
        "OTEL_EXPORTER_OTLP_ENDPOINT": RECEIVER,
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "grpc_aio_server",
    },
}
BASELINE = "off"
# A bare Flask hello endpoint (no telemetry, no I/O) under the service's gunicorn settings: the framework's
# limit.
BARE = "bare-hello"
VARIANTS: tuple[str, ...] = (*VARIANT_ENVIRONMENT, BARE)
OPT_IN = ("shipped-no-rpc-spans",)
# What a plain `python -m bench` runs: the profiles the targets are about.
DEFAULT_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v not in OPT_IN)

PLATFORM_FLASK_SCOPE = "app.telemetry.flask_instrumentation"
PLATFORM_GRPC_SCOPE = "app.telemetry.grpc_instrumentation"
CONTRIB_GRPC_SCOPE = "opentelemetry.instrumentation.grpc"
CONTRIB_FLASK_SCOPE = "opentelemetry.instrumentation.flask"
ACCESS_LOG_SCOPE = "app.http.access"
DEFAULT_SAMPLE_RATIO = 0.1
# Below this many requests a sampled fraction says too little to be checked.
ENOUGH_FOR_SAMPLING = 1000


def environment(variant: str, receiver: str, nowhere: str) -> dict[str, str]:
    return {
        name: value.replace(RECEIVER, receiver).replace(NOWHERE, nowhere)
        for name, value in VARIANT_ENVIRONMENT[variant].items()
    }


def transports_of(variant: str, chosen: tuple[Transport, ...]) -> tuple[Transport, ...]:
    return tuple(t for t in chosen if t == "http") if variant == BARE else chosen


@dataclass(frozen=True)
class Evidence:
    """What one started server of a variant did: requests served, what its /metrics showed at the end, what
    reached the OTLP receiver while it lived (including its final flush at shutdown)."""

    variant: str
    requests: dict[Transport, int]
    metric_families: frozenset[str]
    sdk_spans_sampled: float  # otel_sdk_span_started_total, sampled, from /metrics
    received: Received
    receiver_cpu_s: float

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def server_spans(self, scope: str) -> int:
        return self.received.server_spans[scope]

    def per_request(self, count: float) -> float:
        return count / self.total_requests if self.total_requests else 0.0


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str


def _telemetry_on(e: Evidence) -> list[Check]:
    """/metrics carries the request metrics of every transport that was driven."""
    wanted = {"http": HTTP_DURATION, "grpc": RPC_DURATION}
    return [
        Check(f"/metrics has {wanted[t]}", wanted[t] in e.metric_families, "")
        for t, n in e.requests.items()
        if n
    ]


def _exported(e: Evidence) -> list[Check]:
    r = e.received
    checks = [
        Check("spans reached the receiver", r.spans.total() > 0, f"{r.spans.total():,} spans"),
        Check("metrics reached the receiver", r.points.total() > 0, f"{r.points.total():,} data points"),
    ]
    wanted = {"http": "http.server.request.duration", "grpc": "rpc.server.call.duration"}
    checks += [
        Check(f"{wanted[t]} was exported", r.points[wanted[t]] > 0, f"{r.points[wanted[t]]:,} points")
        for t, n in e.requests.items()
        if n
    ]
    return checks


def _scope(e: Evidence, transport: Transport, present: str, absent: str) -> list[Check]:
    """The transport's server spans come from the instrumentation the variant claims, none from the other."""
    if not e.requests.get(transport):
        return []
    label = {"http": "HTTP", "grpc": "gRPC"}[transport]
    return [
        Check(
            f"{label} server spans from {present}",
            e.server_spans(present) > 0,
            f"{e.server_spans(present):,}",
        ),
        Check(f"no spans from {absent}", e.received.spans[absent] == 0, f"{e.received.spans[absent]:,}"),
    ]


def _platform_scopes(e: Evidence) -> list[Check]:
    return [
        *_scope(e, "http", PLATFORM_FLASK_SCOPE, CONTRIB_FLASK_SCOPE),
        *_scope(e, "grpc", PLATFORM_GRPC_SCOPE, CONTRIB_GRPC_SCOPE),
    ]


def _sampled_share(e: Evidence, low: float, high: float) -> list[Check]:
    if e.total_requests < ENOUGH_FOR_SAMPLING:
        return []
    share = e.per_request(e.received.server_spans.total())
    return [
        Check(f"server spans per request in [{low:.2g}, {high:.2g}]", low <= share <= high, f"{share:.3f}")
    ]


def _received_nothing(e: Evidence) -> list[Check]:
    return [Check("nothing reached the receiver", e.received.nothing, _summary(e.received))]


def prove_off(e: Evidence) -> list[Check]:
    return [
        *_received_nothing(e),
        Check(f"/metrics has no {HTTP_DURATION}", HTTP_DURATION not in e.metric_families, ""),
        Check(f"/metrics has no {RPC_DURATION}", RPC_DURATION not in e.metric_families, ""),
    ]


def prove_shipped(e: Evidence) -> list[Check]:
    return [
        *_telemetry_on(e),
        *_exported(e),
        *_platform_scopes(e),
        *_sampled_share(e, DEFAULT_SAMPLE_RATIO / 3, DEFAULT_SAMPLE_RATIO * 3),
    ]


def prove_stock(e: Evidence) -> list[Check]:
    return [
        *_telemetry_on(e),
        *_exported(e),
        *_scope(e, "http", CONTRIB_FLASK_SCOPE, PLATFORM_FLASK_SCOPE),
        *_scope(e, "grpc", CONTRIB_GRPC_SCOPE, PLATFORM_GRPC_SCOPE),
        *_sampled_share(e, DEFAULT_SAMPLE_RATIO / 3, DEFAULT_SAMPLE_RATIO * 3),
    ]


def prove_endpoint_down(e: Evidence) -> list[Check]:
    sampled = e.per_request(e.sdk_spans_sampled)
    return [
        *_received_nothing(e),
        *_telemetry_on(e),
        Check(
            "spans were sampled for export (otel_sdk_span_started_total on /metrics)",
            e.sdk_spans_sampled > 0,
            f"{sampled:.3f} per request",
        ),
    ]


def prove_demo(e: Evidence) -> list[Check]:
    access = e.received.logs[ACCESS_LOG_SCOPE]
    http = e.requests.get("http", 0)
    checks = [*_telemetry_on(e), *_exported(e), *_platform_scopes(e)]
    checks += _sampled_share(e, 0.8, 1.2)
    if http:
        checks.append(
            Check("access lines over OTLP", access >= 0.8 * http, f"{access / http:.3f} per request")
        )
    return checks


def prove_no_rpc_spans(e: Evidence) -> list[Check]:
    checks = [*_telemetry_on(e), *_scope(e, "http", PLATFORM_FLASK_SCOPE, CONTRIB_FLASK_SCOPE)]
    rpc = e.received.server_spans[PLATFORM_GRPC_SCOPE] + e.received.server_spans[CONTRIB_GRPC_SCOPE]
    return [*checks, Check("no gRPC server spans", rpc == 0, f"{rpc:,}")]


def prove_bare(e: Evidence) -> list[Check]:
    return [*_received_nothing(e), Check("no /metrics", not e.metric_families, "")]


PROOFS: dict[str, Callable[[Evidence], list[Check]]] = {
    "off": prove_off,
    "shipped": prove_shipped,
    "stock": prove_stock,
    "shipped-endpoint-down": prove_endpoint_down,
    "demo": prove_demo,
    "shipped-no-rpc-spans": prove_no_rpc_spans,
    BARE: prove_bare,
}


def prove(evidence: Evidence) -> list[Check]:
    served = Check("requests were served", evidence.total_requests > 0, f"{evidence.total_requests:,}")
    return [served, *PROOFS[evidence.variant](evidence)]


def _summary(r: Received) -> str:
    return f"{r.spans.total():,} spans, {r.points.total():,} points, {r.logs.total():,} log records"


def summary(e: Evidence) -> str:
    """One line of what reached the receiver, for the report."""
    scopes = ", ".join(f"{scope or '?'} {n:,}" for scope, n in e.received.server_spans.most_common())
    return _summary(e.received) + (f" (server spans: {scopes})" if scopes else "")
