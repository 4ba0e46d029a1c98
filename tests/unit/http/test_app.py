"""The HTTP adapter through Flask's test client, with the real services (real redis) behind it."""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.settings import Settings
from tests.unit.conftest import Captured
from tests.unit.http.conftest import bearer


def flask_routes(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        out |= {(path, m.lower()) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return out


def test_openapi_document_describes_exactly_the_routes(client: FlaskClient, app: Flask) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, m) for path, item in doc["paths"].items() for m in item if m != "parameters"}
    assert documented == flask_routes(app)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters" and (path.startswith(("/v1", "/admin"))):
                assert op["security"], (path, method)
                assert {"401", "403", "429"} <= set(op["responses"]), (path, method)


def test_request_id_is_accepted_when_well_formed_and_replaced_otherwise(
    client: FlaskClient, settings: Settings
) -> None:
    r = client.get("/v1/items/nope", headers={**bearer(settings), "X-Request-ID": "abc-123"})
    assert r.status_code == 404
    assert r.headers["X-Request-ID"] == "abc-123"
    assert r.get_json()["request_id"] == "abc-123"
    assert r.headers["X-Instance-Id"] == "test-instance"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


def test_item_round_trip_with_version_conflict(client: FlaskClient, settings: Settings) -> None:
    auth = bearer(settings)
    r = client.put("/v1/items/k1", json={"value": {"a": [1, 2]}, "ttl_s": 60}, headers=auth)
    assert r.status_code == 200
    assert r.get_json() == {"key": "k1", "value": {"a": [1, 2]}, "version": 1, "ttl_s": 60}
    r = client.put("/v1/items/k1", json={"value": 2, "if_version": 7}, headers=auth)
    assert r.status_code == 409
    assert r.get_json()["field"] == "if_version"
    assert client.delete("/v1/items/k1", headers=auth).status_code == 204
    assert client.get("/v1/items/k1", headers=auth).status_code == 404


def test_rate_limit_headers_on_every_guarded_response(client: FlaskClient, settings: Settings) -> None:
    r = client.get("/v1/items/x", headers=bearer(settings))
    assert int(r.headers["RateLimit-Limit"]) > 0
    assert int(r.headers["RateLimit-Remaining"]) >= 0
    assert "RateLimit-Limit" not in client.get("/healthz").headers


def test_unexpected_errors_are_a_bare_500(app: Flask, client: FlaskClient) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("internal detail that must not leak")

    r = client.get("/boom")
    assert r.status_code == 500
    assert r.mimetype == "application/problem+json"
    assert "internal detail" not in r.get_data(as_text=True)


def test_no_secret_reaches_any_log_record_or_span(
    client: FlaskClient, settings: Settings, spans: InMemorySpanExporter, captured: Captured
) -> None:
    """Send every kind of secret through the API; search stdout JSON, OTLP log records and spans."""
    auth = bearer(settings)
    token = auth["Authorization"].split()[1]
    plaintext = b"the launch code is 0000"
    p64 = base64.b64encode(plaintext).decode()
    sealed = client.post("/v1/crypto/encrypt", json={"plaintext": p64}, headers=auth).get_json()
    opened = client.post("/v1/crypto/decrypt", json=sealed, headers=auth).get_json()
    assert base64.b64decode(opened["plaintext"]) == plaintext
    signed = client.post("/v1/crypto/sign", json={"message": p64}, headers=auth).get_json()
    assert client.post("/v1/crypto/verify", json={"message": p64, **signed}, headers=auth).get_json()["valid"]
    # Failures log too: a tampered ciphertext and a forged token.
    assert (
        client.post("/v1/crypto/decrypt", json={**sealed, "ciphertext": p64}, headers=auth).status_code == 400
    )
    assert client.get("/v1/items/x", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    logging.getLogger("app.test").info("debug dump %s", {"authorization": auth["Authorization"]})

    secrets = {
        "token": token,
        "plaintext": plaintext.decode(),
        "plaintext_b64": p64,
        "ciphertext": sealed["ciphertext"],
        "signature": signed["signature"],
        "auth_key": settings.auth_signing_key,
        "crypto_key": settings.crypto_keys.split(":")[1].split(",")[0],
        "signing_key": settings.crypto_signing_key,
    }
    haystacks: list[str] = [captured.text()]
    for rec in captured.otlp.get_finished_logs():
        haystacks.append(
            json.dumps(
                {"body": str(rec.log_record.body), "attributes": dict(rec.log_record.attributes or {})},
                default=str,
            )
        )
    for span in spans.get_finished_spans():
        haystacks.append(json.dumps(dict(span.attributes or {}), default=str))
        haystacks.extend(json.dumps(dict(e.attributes or {}), default=str) for e in span.events)
    assert len(haystacks) > 3, "the test produced logs and spans to search"
    assert any("debug dump" in h for h in haystacks)
    text = "\n".join(haystacks)
    leaked = {name for name, value in secrets.items() if value and value in text}
    assert leaked == set(), leaked


def test_readiness_names_its_reasons(app: Flask, client: FlaskClient) -> None:
    assert client.get("/readyz").status_code == 200
    services: Any = app.extensions["platform"]
    services.begin_shutdown()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "shutting down" in r.get_json()["detail"]
    assert r.headers["Retry-After"] == "1"


def test_one_access_line_per_request_inside_its_trace(
    client: FlaskClient, settings: Settings, spans: InMemorySpanExporter, captured: Captured
) -> None:
    headers = {**bearer(settings, sub="reader"), "X-Request-ID": "acc-1", "User-Agent": "probe/1"}
    assert client.get("/v1/items/absent", headers=headers).status_code == 404
    (line,) = [line for line in captured.lines() if line["logger"] == "app.http.access"]
    assert line["message"] == "GET /v1/items/absent 404"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/items/absent", 404)
    assert (line["request_id"], line["user"], line["user_agent"]) == ("acc-1", "reader", "probe/1")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    (span,) = [s for s in spans.get_finished_spans() if s.name == "GET /v1/items/<key>"]
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")


def test_access_lines_scrub_what_clients_send(client: FlaskClient, captured: Captured) -> None:
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl"
    client.get(f"/v1/items/{token}", headers={"User-Agent": f"Bearer {token}"})
    (line,) = [line for line in captured.lines() if line["logger"] == "app.http.access"]
    assert token not in json.dumps(line)
    assert line["status"] == 401


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        (b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body", "nested too deeply"),
        (b'{"value": ' + b"[" * 40 + b"]" * 40 + b"}", "value", "at most 32"),
        (b'{"value": "\\ud800"}', "value", "surrogate"),
        (b'{"value": ' + b"9" * 5000 + b"}", "body", "not valid JSON"),
        (b'{"value": 1', "body", "not valid JSON"),
        (b'{"value": "\xff"}', "body", "not valid JSON"),
    ],
)
def test_hostile_json_is_a_400_naming_the_field(
    client: FlaskClient, settings: Settings, body: bytes, field: str, detail: str
) -> None:
    r = client.put(
        "/v1/items/hostile", data=body, headers={**bearer(settings), "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.get_data()
    problem = r.get_json()
    assert problem["field"] == field and detail in problem["detail"]
