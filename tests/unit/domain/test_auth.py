from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.domain import context
from app.domain.auth import Authenticator
from app.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from app.settings import Settings, load_settings
from tests.unit.conftest import settings_env


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


@pytest.fixture(autouse=True)
def request_context() -> Iterator[None]:
    """authenticate() sets the request's user; keep that inside each test."""
    with context.bind(context.RequestContext()):
        yield


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def auth(settings: Settings) -> Authenticator:
    return Authenticator(settings)


def valid_claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "alice",
        "scope": "items:read items:write",
        "aud": settings.token_audience,
        "exp": now + 60,
    }
    claims.update(overrides)
    return claims


def test_valid_token_yields_principal(auth: Authenticator) -> None:
    token = auth.mint("alice", ["items:read", "crypto"], ttl_s=60)
    principal = auth.authenticate(f"Bearer {token}")
    assert principal.subject == "alice"
    assert principal.scopes == frozenset({"items:read", "crypto"})
    assert auth.authenticate(f"bearer   {token} ").subject == "alice"  # scheme is case-insensitive


def test_authorize_checks_scope(auth: Authenticator) -> None:
    principal = auth.authenticate("Bearer " + auth.mint("bob", ["items:read"], ttl_s=60))
    auth.authorize(principal, "items:read")
    with pytest.raises(PermissionDenied):
        auth.authorize(principal, "items:write")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b", "x" * 9000]
)
def test_missing_or_malformed_header(auth: Authenticator, header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        auth.authenticate(header)


def test_expired_token_beyond_leeway(settings: Settings) -> None:
    long_ago = Authenticator(settings, clock=lambda: time.time() - 3600)
    with pytest.raises(Unauthenticated):
        Authenticator(settings).authenticate("Bearer " + long_ago.mint("alice", ["a"], ttl_s=60))
    # Within the 5 s leeway a just-expired token still passes (clock skew between hosts).
    just_expired = Authenticator(settings, clock=lambda: time.time() - 62)
    assert Authenticator(settings).authenticate("Bearer " + just_expired.mint("alice", ["a"], ttl_s=60))


def test_a_remembered_token_still_expires(settings: Settings) -> None:
    now = [time.time()]
    auth = Authenticator(settings, clock=lambda: now[0])
    header = "Bearer " + auth.mint("alice", ["read"], ttl_s=60)
    first = auth.authenticate(header)
    assert auth.authenticate(header) is first  # served from the verified-token cache
    now[0] += 60 + 5 + 1  # past exp and the leeway
    with pytest.raises(Unauthenticated):
        auth.authenticate(header)


def test_garbage_and_tampered_tokens(auth: Authenticator, settings: Settings) -> None:
    token = auth.mint("alice", ["a"], ttl_s=60)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    tampered = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    for bad in ("not.a.jwt", "abc", tampered, token[:-4] + "AAAA"):
        with pytest.raises(Unauthenticated) as info:
            auth.authenticate(f"Bearer {bad}")
        assert bad not in str(info.value)


def test_alg_none_is_refused(auth: Authenticator, settings: Settings) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, valid_claims(settings), None)
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {token}")


def test_hs256_forged_with_the_public_key_is_refused(auth: Authenticator, settings: Settings) -> None:
    public = settings.auth_public_key
    secrets = [
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ]
    for secret in secrets:
        token = forge(
            {"alg": "HS256", "typ": "JWT"}, valid_claims(settings), functools.partial(hmac_sha256, secret)
        )
        with pytest.raises(Unauthenticated):
            auth.authenticate(f"Bearer {token}")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_from_the_future_is_refused_beyond_the_leeway(
    auth: Authenticator, settings: Settings, claim: str
) -> None:
    def signed(offset_s: int) -> str:
        claims = valid_claims(settings, **{claim: int(time.time()) + offset_s})
        return jwt.encode(claims, settings.auth_private_key, algorithm="EdDSA")

    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {signed(3600)}")
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {signed(30)}")
    # An issuer whose clock runs a little ahead: within the 5 s leeway, as for exp.
    assert auth.authenticate(f"Bearer {signed(2)}").subject == "alice"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA", "typ": "JWT", "kid": "k" * 5000},  # huge, but under the header limit
        {"alg": "EdDSA", "typ": "JWT", "crit": ["exp"], "x": ["y"] * 500},
        {"alg": "EdDSA", "jku": "http://attacker.example/keys.json", "jwk": {"kty": "OKP"}},
    ],
)
def test_odd_headers_on_a_valid_signature_change_nothing(
    auth: Authenticator, settings: Settings, header: dict[str, Any]
) -> None:
    """The key is configured, never taken from the token: kid, jku and jwk are ignored, oversized or not."""
    token = forge(header, valid_claims(settings), settings.auth_private_key.sign)
    assert len(token) < 8192
    # Signed with the right key, so valid or refused only for the header (crit names no extension we
    # understand): either way it never raises anything but Unauthenticated.
    try:
        assert auth.authenticate(f"Bearer {token}").subject == "alice"
    except Unauthenticated:
        assert "crit" in header


def test_wrong_audience_is_refused(auth: Authenticator, settings: Settings) -> None:
    for audience in ("platform:prod-but-not-this", ["someone-else"], ""):
        token = jwt.encode(valid_claims(settings, aud=audience), settings.auth_private_key, algorithm="EdDSA")
        with pytest.raises(Unauthenticated):
            auth.authenticate(f"Bearer {token}")


@pytest.mark.parametrize("missing", ["exp", "sub", "scope", "aud"])
def test_required_claims(auth: Authenticator, settings: Settings, missing: str) -> None:
    claims = valid_claims(settings)
    del claims[missing]
    token = jwt.encode(claims, settings.auth_private_key, algorithm="EdDSA")
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {token}")


def test_token_from_another_environment_does_not_verify(tmp_path: Path) -> None:
    dev = load_settings({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(tmp_path / "dev.json")})
    dev_token = Authenticator(dev).mint("alice", ["admin"], ttl_s=60)
    prod = load_settings(settings_env(app_env="prod"))
    with pytest.raises(Unauthenticated):
        Authenticator(prod).authenticate(f"Bearer {dev_token}")
    # Same keys, other environment: the audience alone refuses it.
    same_keys = {k: v for k, v in settings_env().items() if k != "APP_ENV"}
    staging = load_settings({**same_keys, "APP_ENV": "staging"})
    prod_same_keys = load_settings({**same_keys, "APP_ENV": "prod"})
    staging_token = Authenticator(staging).mint("alice", ["admin"], ttl_s=60)
    with pytest.raises(Unauthenticated):
        Authenticator(prod_same_keys).authenticate(f"Bearer {staging_token}")
    assert Authenticator(staging).authenticate(f"Bearer {staging_token}").subject == "alice"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"subject": ""}, "subject"),
        ({"subject": "a b"}, "subject"),
        ({"subject": "x" * 129}, "subject"),
        ({"scopes": ["ok", "not ok"]}, "scopes"),
        ({"scopes": [f"s{i}" for i in range(33)]}, "scopes"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 86_401}, "ttl_s"),
        ({"ttl_s": True}, "ttl_s"),
    ],
)
def test_mint_validates(auth: Authenticator, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"subject": "alice", "scopes": ["a"], "ttl_s": 60, **kwargs}
    with pytest.raises(InvalidArgument) as info:
        auth.mint(**args)
    assert info.value.field == field


def test_minted_token_is_eddsa_with_the_expected_claims(auth: Authenticator, settings: Settings) -> None:
    token = auth.mint("svc", ["b", "a", "a"], ttl_s=120)
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    claims = jwt.decode(
        token, settings.auth_public_key, algorithms=["EdDSA"], audience=settings.token_audience
    )
    assert claims["scope"] == "a b"
    assert claims["exp"] - claims["iat"] == 120


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()
