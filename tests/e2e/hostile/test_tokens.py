"""Bad tokens on both transports of the real service: 401 over HTTP, UNAUTHENTICATED over gRPC, every one.

The unit tests (tests/unit/domain/test_auth.py, tests/unit/rpc/test_auth.py) cover the authenticator and
the interceptor one by one; this is the deployment, forged with the service's own keys where it matters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.rpc.interceptors import METHOD_SCOPES
from app.rpc.platform.v1 import platform_pb2 as pb
from app.settings import load_settings
from tests.e2e.conftest import mint
from tests.e2e.hostile.conftest import Hostile, http_request

pytestmark = pytest.mark.e2e


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode())) if sign else ''}"


def bad_tokens(hostile: Hostile) -> dict[str, str]:
    settings = load_settings({**hostile.env})
    key = settings.auth_private_key
    now = int(time.time())
    claims = {"sub": "mallory", "scope": "read write admin", "aud": settings.token_audience, "exp": now + 600}

    def eddsa(**changes: Any) -> str:
        return jwt.encode({**claims, **changes}, key, algorithm="EdDSA")

    public_raw = settings.auth_public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    public_pem = settings.auth_public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    good = hostile.token
    return {
        "malformed": "not.a.jwt",
        "truncated": good[: len(good) // 2],
        "bad signature": good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB"),
        "expired": eddsa(exp=now - 3600),
        "not valid yet (nbf)": eddsa(nbf=now + 3600),
        "issued in the future (iat)": eddsa(iat=now + 3600),
        "wrong key": jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        "wrong audience": eddsa(aud="platform:prod"),
        "no audience": jwt.encode({k: v for k, v in claims.items() if k != "aud"}, key, algorithm="EdDSA"),
        "alg none": forge({"alg": "none", "typ": "JWT"}, claims, None),
        "HS256 with the raw public key": forge(
            {"alg": "HS256"}, claims, lambda m: hmac.new(public_raw, m, hashlib.sha256).digest()
        ),
        "HS256 with the PEM public key": forge(
            {"alg": "HS256"}, claims, lambda m: hmac.new(public_pem, m, hashlib.sha256).digest()
        ),
        "huge kid, wrong signature": forge({"alg": "EdDSA", "kid": "k" * 5000}, claims, lambda m: b"s" * 64),
        "oversized (past the 8192-character limit, within the transports')": "e" * 8150,
        "non-string subject": eddsa(sub=12345),
        "subject with a newline": eddsa(sub="alice\n"),
    }


def test_every_bad_token_is_refused_on_both_transports(hostile: Hostile) -> None:
    tokens = bad_tokens(hostile)
    for name, token in tokens.items():
        r = hostile.send(http_request("GET", "/v1/items/k1", token=token))
        assert r.status == 401, (name, r.status, r.body)
        assert json.loads(r.body)["status"] == 401
        assert token[:40] not in r.body.decode("latin-1")
        code, details = hostile.rpc(
            "GetItem", pb.GetItemRequest(key="k1").SerializeToString(), [("authorization", f"Bearer {token}")]
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code, details)
    # Missing or malformed headers, not just tokens.
    malformed = ("", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token x", f"Bearer {hostile.token} x")
    for header in (None, *malformed):
        headers = {"Authorization": header} if header is not None else {}
        assert hostile.send(http_request("GET", "/v1/items/k1", headers=headers)).status == 401, header
        metadata = [("authorization", header)] if header is not None else []
        code, _ = hostile.rpc("GetItem", pb.GetItemRequest(key="k1").SerializeToString(), metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, header


def test_tokens_too_big_for_the_transport_get_its_size_error(hostile: Hostile) -> None:
    token = "e" * 20_000  # past gunicorn's 8190-byte header field and gRPC's 16 KiB of metadata
    r = hostile.send(http_request("GET", "/v1/items/k1", token=token))
    assert r.status == 431 and r.headers["content-type"] == "application/problem+json"
    code, _ = hostile.rpc("GetItem", b"", [("authorization", f"Bearer {token}")])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_admin_operations_need_the_admin_scope(hostile: Hostile) -> None:
    no_admin = mint(hostile.env, "not-an-admin", "read write")
    for method, body in (("GET", b""), ("POST", b'{"reset": true}')):
        r = hostile.send(http_request(method, "/admin/chaos", token=no_admin, body=body))
        assert r.status == 403 and json.loads(r.body)["status"] == 403
        r = hostile.send(http_request(method, "/admin/chaos", token=hostile.token, body=body))
        assert r.status == 200, r.body
    r = hostile.send(http_request("POST", "/admin/jobs/replay", token=no_admin, body=b"{}"))
    assert r.status == 403
    # gRPC's one admin operation refuses read/write, and takes the admin scope.
    assert [m for m, scope in METHOD_SCOPES.items() if scope == "admin"] == ["ReplayDeadJobs"]
    replay = pb.ReplayDeadJobsRequest().SerializeToString()
    code, _ = hostile.rpc("ReplayDeadJobs", replay, [("authorization", f"Bearer {no_admin}")])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = hostile.rpc("ReplayDeadJobs", replay, [("authorization", f"Bearer {hostile.token}")])
    assert code == grpc.StatusCode.OK
    # A read-only token gets PERMISSION_DENIED for a write RPC, as over HTTP.
    reader = mint(hostile.env, "reader", "read")
    delete = pb.DeleteItemRequest(key="k1").SerializeToString()
    code, _ = hostile.rpc("DeleteItem", delete, [("authorization", f"Bearer {reader}")])
    assert code == grpc.StatusCode.PERMISSION_DENIED
