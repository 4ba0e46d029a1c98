"""OpenAPI 3.1 description of the HTTP API, served at /openapi.json; a test checks it against the routes."""

from __future__ import annotations

from functools import cache
from typing import Any

from app import __version__

B64 = {"type": "string", "contentEncoding": "base64"}
PROBLEM = {"$ref": "#/components/responses/Problem"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": True}


def _op(
    summary: str,
    *,
    scope: str | None,
    body: dict[str, Any] | None = None,
    ok: dict[str, Any] | None = None,
    ok_status: str = "200",
    params: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if params:
        op["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    ok_resp: dict[str, Any] = {"description": "OK"}
    if ok is not None:
        ok_resp["content"] = {"application/json": {"schema": ok}}
    op["responses"][ok_status] = ok_resp
    if body is not None or params:
        op["responses"]["400"] = PROBLEM
    if scope is not None:
        op["security"] = [{"bearer": [scope]}]
        op["description"] = f"Requires scope `{scope}`. Rate limited per caller."
        op["responses"].update({"401": PROBLEM, "403": PROBLEM, "429": PROBLEM})
    op["responses"]["default"] = PROBLEM
    return op


ITEM = _obj(
    ["key", "value", "version"],
    key={"type": "string"},
    value={},
    version={"type": "integer"},
    ttl_s={"type": ["integer", "null"]},
)
QUOTE = _obj(
    ["symbol", "price", "currency", "as_of", "stale"],
    symbol={"type": "string"},
    price={"type": "number"},
    currency={"type": "string"},
    as_of={"type": "number"},
    stale={"type": "boolean", "description": "served from the last good value: upstream failing"},
)
CHAOS = _obj(
    [],
    redis_error_rate={"type": "number", "minimum": 0, "maximum": 1},
    loop_block_ms={"type": "integer", "minimum": 0, "maximum": 5000},
    gil_block_ms={"type": "integer", "minimum": 0, "maximum": 5000},
    ttl_s={"type": "integer", "minimum": 1, "maximum": 3600},
    reset={"type": "boolean"},
)


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "platform API",
            "version": __version__,
            "description": "Reference service: the same operations are served over gRPC "
            "(platform.v1.PlatformService). Errors are RFC 9457 problem+json.",
        },
        "paths": {
            "/healthz": {"get": _op("Liveness", scope=None)},
            "/readyz": {
                "get": {
                    **_op("Readiness: 503 with reasons while not ready", scope=None),
                    "responses": {"200": {"description": "ready"}, "503": PROBLEM},
                }
            },
            "/metrics": {"get": _op("Prometheus metrics, aggregated over all workers", scope=None)},
            "/openapi.json": {"get": _op("This document", scope=None)},
            "/v1/items/{key}": {
                "parameters": [{"$ref": "#/components/parameters/key"}],
                "get": {
                    **_op("Read an item", scope="read", ok=ITEM),
                    "responses": {**_op("", scope="read", ok=ITEM)["responses"], "404": PROBLEM},
                },
                "put": _op(
                    "Create or replace an item",
                    scope="write",
                    ok=ITEM,
                    body=_obj(
                        ["value"],
                        value={},
                        ttl_s={"type": "integer", "minimum": 1},
                        if_version={
                            "type": "integer",
                            "description": "409 unless the stored version matches",
                        },
                    ),
                ),
                "delete": _op("Delete an item", scope="write", ok_status="204"),
            },
            "/v1/crypto/encrypt": {
                "post": _op(
                    "AES-256-GCM encrypt",
                    scope="write",
                    body=_obj(["plaintext"], plaintext=B64, aad=B64),
                    ok=_obj(
                        ["key_id", "nonce", "ciphertext"],
                        key_id={"type": "string"},
                        nonce=B64,
                        ciphertext=B64,
                    ),
                )
            },
            "/v1/crypto/decrypt": {
                "post": _op(
                    "AES-256-GCM decrypt (any configured key id)",
                    scope="write",
                    body=_obj(
                        ["key_id", "nonce", "ciphertext"],
                        key_id={"type": "string"},
                        nonce=B64,
                        ciphertext=B64,
                        aad=B64,
                    ),
                    ok=_obj(["plaintext"], plaintext=B64),
                )
            },
            "/v1/crypto/sign": {
                "post": _op(
                    "Ed25519 sign",
                    scope="write",
                    body=_obj(["message"], message=B64),
                    ok=_obj(["signature", "public_key"], signature=B64, public_key=B64),
                )
            },
            "/v1/crypto/verify": {
                "post": _op(
                    "Ed25519 verify",
                    scope="write",
                    body=_obj(["message", "signature"], message=B64, signature=B64, public_key=B64),
                    ok=_obj(["valid"], valid={"type": "boolean"}),
                )
            },
            "/v1/compute/hash": {
                "post": _op(
                    "Password hash (scrypt or PBKDF2, bounded cost) in the worker pool",
                    scope="write",
                    body=_obj(
                        ["password"],
                        password=B64,
                        salt=B64,
                        algorithm={"enum": ["scrypt", "pbkdf2"]},
                        params={"type": "object", "additionalProperties": {"type": "integer"}},
                    ),
                    ok=_obj(
                        ["algorithm", "salt", "digest", "params"],
                        algorithm={"type": "string"},
                        salt=B64,
                        digest=B64,
                        params={"type": "object"},
                    ),
                )
            },
            "/v1/compute/primes": {
                "post": _op(
                    "Count primes up to a bounded limit, in the worker pool",
                    scope="write",
                    body=_obj(["limit"], limit={"type": "integer", "minimum": 2}),
                    ok=_obj(["limit", "count"], limit={"type": "integer"}, count={"type": "integer"}),
                )
            },
            "/v1/quotes/{symbol}": {
                "get": _op(
                    "A quote from the upstream (timeout, retry, circuit breaker; stale fallback)",
                    scope="read",
                    ok=QUOTE,
                    params=("symbol",),
                )
            },
            "/admin/chaos": {
                "get": _op("Current fault injection", scope="admin", ok=CHAOS),
                "post": _op(
                    "Set fault injection for every worker (expires after ttl_s)",
                    scope="admin",
                    body=CHAOS,
                    ok=CHAOS,
                ),
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}
            },
            "parameters": {
                "key": {
                    "name": "key",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                },
                "symbol": {
                    "name": "symbol",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[A-Z]{1,8}$"},
                },
            },
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem",
                    "content": {
                        "application/problem+json": {
                            "schema": _obj(
                                ["type", "title", "status", "detail"],
                                type={"type": "string"},
                                title={"type": "string"},
                                status={"type": "integer"},
                                detail={"type": "string"},
                                field={"type": "string"},
                                request_id={"type": "string"},
                            )
                        }
                    },
                }
            },
        },
    }
