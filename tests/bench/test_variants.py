"""Each variant's proof: what it must show to count as the variant it claims to be."""

from __future__ import annotations

from collections import Counter

from bench.otlp_sink import Received
from bench.scrape import HTTP_DURATION, RPC_DURATION
from bench.stack import grpc_frame, grpc_response_bytes
from bench.variants import (
    BARE,
    CONTRIB_FLASK_SCOPE,
    CONTRIB_GRPC_SCOPE,
    NOWHERE,
    PLATFORM_FLASK_SCOPE,
    PLATFORM_GRPC_SCOPE,
    RECEIVER,
    VARIANT_ENVIRONMENT,
    Evidence,
    environment,
    prove,
    transports_of,
)

BOTH = frozenset({HTTP_DURATION, RPC_DURATION})


def received(
    flask_scope: str = PLATFORM_FLASK_SCOPE,
    grpc_scope: str = PLATFORM_GRPC_SCOPE,
    sampled: float = 0.1,
    access: int = 0,
) -> Received:
    http_spans, grpc_spans = int(1000 * sampled), int(1000 * sampled)
    return Received(
        exports=Counter({"traces": 3, "metrics": 1, "logs": 1}),
        spans=Counter({flask_scope: http_spans, grpc_scope: grpc_spans, "redis": http_spans}),
        server_spans=Counter({flask_scope: http_spans, grpc_scope: grpc_spans}),
        points=Counter({"http.server.request.duration": 4, "rpc.server.call.duration": 2}),
        logs=Counter({"app.http.access": access}),
    )


def evidence(variant: str, families: frozenset[str] = BOTH, rx: Received | None = None) -> Evidence:
    return Evidence(variant, {"http": 1000, "grpc": 1000}, families, 150.0, rx or Received(), 0.1)


def failed(e: Evidence) -> list[str]:
    return [c.what for c in prove(e) if not c.ok]


def test_the_table_has_the_profiles_and_placeholders_are_filled() -> None:
    assert list(VARIANT_ENVIRONMENT) == [
        "off",
        "shipped",
        "stock",
        "shipped-endpoint-down",
        "demo",
        "shipped-no-rpc-spans",
    ]
    env = environment("shipped-endpoint-down", "http://127.0.0.1:1", "http://127.0.0.1:2")
    assert env == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:2"}
    assert all(RECEIVER not in v and NOWHERE not in v for v in environment("demo", "a", "b").values())
    assert transports_of(BARE, ("http", "grpc")) == ("http",)
    assert transports_of("off", ("grpc",)) == ("grpc",)


def test_off_proves_itself_and_fails_with_telemetry() -> None:
    assert failed(evidence("off", families=frozenset())) == []
    assert failed(evidence("off", rx=received())) == [
        "nothing reached the receiver",
        f"/metrics has no {HTTP_DURATION}",
        f"/metrics has no {RPC_DURATION}",
    ]


def test_shipped_needs_exports_from_the_platform_instrumentation_at_the_default_ratio() -> None:
    assert failed(evidence("shipped", rx=received())) == []
    assert failed(evidence("shipped")) == [
        "spans reached the receiver",
        "metrics reached the receiver",
        "http.server.request.duration was exported",
        "rpc.server.call.duration was exported",
        f"HTTP server spans from {PLATFORM_FLASK_SCOPE}",
        f"gRPC server spans from {PLATFORM_GRPC_SCOPE}",
        "server spans per request in [0.033, 0.3]",
    ]
    assert failed(evidence("shipped", rx=received(sampled=1.0))) == [
        "server spans per request in [0.033, 0.3]"
    ]


def test_stock_needs_contribs_server_spans_and_none_of_the_platforms() -> None:
    assert failed(evidence("stock", rx=received(CONTRIB_FLASK_SCOPE, CONTRIB_GRPC_SCOPE))) == []
    assert failed(evidence("stock", rx=received(PLATFORM_FLASK_SCOPE, PLATFORM_GRPC_SCOPE))) == [
        f"HTTP server spans from {CONTRIB_FLASK_SCOPE}",
        f"no spans from {PLATFORM_FLASK_SCOPE}",
        f"gRPC server spans from {CONTRIB_GRPC_SCOPE}",
        f"no spans from {PLATFORM_GRPC_SCOPE}",
    ]


def test_no_rpc_spans_means_none_from_either_grpc_instrumentation() -> None:
    assert failed(evidence("shipped-no-rpc-spans", rx=received(grpc_scope="other"))) == []
    for scope in (PLATFORM_GRPC_SCOPE, CONTRIB_GRPC_SCOPE):
        assert failed(evidence("shipped-no-rpc-spans", rx=received(grpc_scope=scope))) == [
            "no gRPC server spans"
        ]


def test_endpoint_down_exports_nothing_yet_has_telemetry_on() -> None:
    assert failed(evidence("shipped-endpoint-down")) == []
    assert failed(evidence("shipped-endpoint-down", families=frozenset(), rx=received())) == [
        "nothing reached the receiver",
        f"/metrics has {HTTP_DURATION}",
        f"/metrics has {RPC_DURATION}",
    ]


def test_demo_keeps_every_trace_and_ships_access_lines() -> None:
    assert failed(evidence("demo", rx=received(sampled=1.0, access=1000))) == []
    assert failed(evidence("demo", rx=received(sampled=0.1))) == [
        "server spans per request in [0.8, 1.2]",
        "access lines over OTLP",
    ]


def test_a_server_that_served_nothing_proves_nothing() -> None:
    idle = Evidence(BARE, {"http": 0}, frozenset(), 0.0, Received(), 0.0)
    assert failed(idle) == ["requests were served"]


def test_received_counts_travel_as_json_and_subtract() -> None:
    later = received()
    assert Received.from_json(later.to_json()) == later
    assert (later - later).nothing
    assert not (later - Received()).nothing


def test_grpc_wire_format() -> None:
    assert grpc_frame(b"\x0a\x05bench") == b"\x00\x00\x00\x00\x07\x0a\x05bench"
    item = {"key": "bench", "value": {"hello": "world"}, "version": 1, "ttl_s": None}
    assert grpc_response_bytes(item) == 36  # what h2load counted per GetItem of this item
