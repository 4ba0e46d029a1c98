"""OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Every bound a request body has is taken from the constant the domain validates with (app.domain.*), so the
document and the API cannot drift apart; tests/unit/http/test_openapi_agrees.py sends bodies the schemas
allow (they must not fail on a schema rule) and bodies they forbid (they must get 400), and another test
checks the document against the routes.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from app import __version__
from app.domain import chaos, compute, crypto, items, job_kinds, jobs, quotes

B64 = {"type": "string", "contentEncoding": "base64"}
_B64_CHAR = "[A-Za-z0-9+/]"


def b64_bytes(low: int, high: int) -> dict[str, Any]:
    """Standard base64 (padded) of `low` to `high` bytes, as an exact pattern: the decoded length is what the
    API bounds, and a string length alone cannot say it (12 characters are 7, 8 or 9 bytes)."""
    choices = []
    for rest, tail in ((0, ""), (1, f"{_B64_CHAR}{{2}}=="), (2, f"{_B64_CHAR}{{3}}=")):
        fewest, most = max(0, -(-(low - rest) // 3)), (high - rest) // 3
        if most >= fewest:
            choices.append(f"(?:{_B64_CHAR}{{4}}){{{fewest},{most}}}{tail}")
    return {**B64, "pattern": f"^(?:{'|'.join(choices)})$", "description": f"{low} to {high} bytes"}


def optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null means absent, as the API reads it."""
    return {"anyOf": [schema, {"type": "null"}]}


def int_range(low: int, high: int | None = None) -> dict[str, Any]:
    bounds: dict[str, Any] = {"type": "integer", "minimum": low}
    if high is not None:
        bounds["maximum"] = high
    return bounds


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
JOB = _obj(
    ["id", "kind", "params", "status", "attempts", "submitted_at"],
    id={"type": "string"},
    kind={"type": "string"},
    params={"type": "object"},
    status={"enum": [str(s) for s in jobs.JobStatus]},
    attempts={"type": "integer"},
    submitted_at={"type": "number"},
    started_at={"type": ["number", "null"]},
    finished_at={"type": ["number", "null"]},
    result={"description": "the kind's result, once succeeded"},
    error={"type": ["string", "null"], "description": "the last attempt's error"},
)
JOB_PARAMS = (
    "by kind: `primes` {limits: [integer]}, `hash` {inputs: [string], algorithm, params}, `import` "
    f"{{items: {{key: value}}}}; at most {job_kinds.BATCH_MAX} limits or inputs, "
    f"{job_kinds.IMPORT_MAX_ITEMS} items, {job_kinds.PARAMS_MAX_BYTES} bytes as JSON. Stored with the job: "
    "no secrets"
)
CHAOS = {
    **_obj(
        [],
        redis_error_rate={"type": "number", "minimum": 0, "maximum": 1},
        loop_block_ms=int_range(0, chaos.MAX_BLOCK_MS),
        gil_block_ms=int_range(0, chaos.MAX_BLOCK_MS),
        job_failure_rate={"type": "number", "minimum": 0, "maximum": 1},
        job_delay_ms=int_range(0, chaos.MAX_JOB_DELAY_MS),
        ttl_s=int_range(1, chaos.MAX_TTL_S),
        reset={"type": "boolean"},
    ),
    "additionalProperties": False,
}
SCRYPT_N = [2**i for i in range(1, 16)]
HASH_PARAMS = {
    "scrypt": {
        "type": "object",
        "properties": {"n": {"enum": SCRYPT_N}, "r": int_range(1, 16), "p": int_range(1, 4)},
        "additionalProperties": False,
        "description": "scrypt needs 128 * r * (n + p + 2) bytes, which must stay under 64 MiB",
    },
    "pbkdf2": {
        "type": "object",
        "properties": {"iterations": int_range(1, compute.PBKDF2_DEFAULTS["iterations"])},
        "additionalProperties": False,
    },
}
HASH_BODY = {
    **_obj(
        ["password"],
        password=b64_bytes(1, compute.PASSWORD_MAX_BYTES),
        salt=optional(b64_bytes(compute.SALT_MIN_BYTES, compute.SALT_MAX_BYTES)),
        algorithm={"enum": list(compute.ALGORITHMS), "default": compute.ALGORITHMS[0]},
        params={"type": ["object", "null"]},
    ),
    # The cost parameters depend on the algorithm (scrypt when none is given).
    "if": {"properties": {"algorithm": {"const": "pbkdf2"}}, "required": ["algorithm"]},
    "then": {"properties": {"params": optional(HASH_PARAMS["pbkdf2"])}},
    "else": {"properties": {"params": optional(HASH_PARAMS["scrypt"])}},
}


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
                        value={
                            "description": f"any JSON value: at most {items.MAX_VALUE_BYTES} bytes as JSON, "
                            f"{items.MAX_VALUE_DEPTH} nested arrays or objects, no lone surrogates"
                        },
                        ttl_s=optional(int_range(1, items.MAX_TTL_S)),
                        if_version=optional(
                            {
                                **int_range(0),
                                "description": "409 unless the stored version matches (0: must not exist)",
                            }
                        ),
                    ),
                ),
                "delete": _op("Delete an item", scope="write", ok_status="204"),
            },
            "/v1/crypto/encrypt": {
                "post": _op(
                    "AES-256-GCM encrypt",
                    scope="write",
                    body=_obj(
                        ["plaintext"],
                        plaintext=b64_bytes(0, crypto.MAX_PLAINTEXT_BYTES),
                        aad=optional(b64_bytes(0, crypto.MAX_AAD_BYTES)),
                    ),
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
                        key_id={"type": "string", "description": "one of the configured keys"},
                        nonce=b64_bytes(crypto.NONCE_BYTES, crypto.NONCE_BYTES),
                        ciphertext={
                            **b64_bytes(crypto.TAG_BYTES, crypto.MAX_PLAINTEXT_BYTES + crypto.TAG_BYTES),
                            "description": "what encrypt returned; 400 when it does not decrypt",
                        },
                        aad=optional(b64_bytes(0, crypto.MAX_AAD_BYTES)),
                    ),
                    ok=_obj(["plaintext"], plaintext=B64),
                )
            },
            "/v1/crypto/sign": {
                "post": _op(
                    "Ed25519 sign",
                    scope="write",
                    body=_obj(["message"], message=b64_bytes(0, crypto.MAX_MESSAGE_BYTES)),
                    ok=_obj(["signature", "public_key"], signature=B64, public_key=B64),
                )
            },
            "/v1/crypto/verify": {
                "post": _op(
                    "Ed25519 verify",
                    scope="write",
                    body=_obj(
                        ["message", "signature"],
                        message=b64_bytes(0, crypto.MAX_MESSAGE_BYTES),
                        signature=b64_bytes(crypto.SIGNATURE_BYTES, crypto.SIGNATURE_BYTES),
                        public_key=optional(b64_bytes(crypto.PUBLIC_KEY_BYTES, crypto.PUBLIC_KEY_BYTES)),
                    ),
                    ok=_obj(["valid"], valid={"type": "boolean"}),
                )
            },
            "/v1/compute/hash": {
                "post": _op(
                    "Password hash (scrypt or PBKDF2, bounded cost) in the worker pool",
                    scope="write",
                    body=HASH_BODY,
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
                    body=_obj(["limit"], limit=int_range(compute.PRIMES_MIN, compute.PRIMES_MAX)),
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
            "/v1/jobs": {
                "post": {
                    **_op(
                        "Submit a background job (202; the same idempotency key within a day: 200, that job)",
                        scope="write",
                        body=_obj(
                            ["kind"],
                            kind={"enum": ["primes", "hash", "import"]},
                            params={"type": "object", "description": JOB_PARAMS},
                            idempotency_key=optional(
                                {"type": "string", "minLength": 1, "maxLength": jobs.IDEMPOTENCY_KEY_MAX}
                            ),
                        ),
                        ok=JOB,
                        ok_status="202",
                    ),
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    **_op("A job's status, attempts, timings and result or error", scope="read", ok=JOB),
                    "parameters": [{"$ref": "#/components/parameters/job_id"}],
                }
            },
            "/admin/jobs/replay": {
                "post": _op(
                    "Queue dead-lettered jobs again, oldest first, attempts reset",
                    scope="admin",
                    body=_obj([], limit=optional(int_range(1, 10_000))),
                    ok=_obj(["replayed"], replayed={"type": "array", "items": {"type": "string"}}),
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
                    "schema": {"type": "string", "pattern": f"^{items.KEY_PATTERN}$"},
                },
                "job_id": {
                    "name": "job_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": f"^[0-9a-f]{{{jobs.ID_LENGTH}}}$"},
                },
                "symbol": {
                    "name": "symbol",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": f"^{quotes.SYMBOL_PATTERN}$"},
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
