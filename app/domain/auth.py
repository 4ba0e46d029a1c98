"""Bearer-token authentication: EdDSA (Ed25519) JWTs, bound to this environment by their audience.

Verification accepts exactly one algorithm, EdDSA, so "alg: none" and HS256 tokens forged with the
public key as an HMAC secret are refused before any key is used. Tokens must carry exp, sub, scope and
aud; a token whose nbf or iat lies in the future is refused too; 5 s of leeway absorbs clock skew
between issuers and workers, on all three. Every failure says the same thing and
never echoes the token.

Verifying a signature costs ~130 us of CPU, more than the rest of a small request; a caller presents
the same token many times, so successful verifications are remembered (bounded LRU keyed by the token's
SHA-256, never the token itself) until the token's own expiry. Failures are never cached.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable

import jwt
from cachetools import LRUCache

from app.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from app.domain.models import Principal
from app.settings import Settings

ALGORITHM = "EdDSA"
LEEWAY_S = 5
MAX_TTL_S = 86_400
MAX_HEADER_CHARS = 8192  # bigger headers are refused before any parsing
# Used with fullmatch: Python's $ would also match before a trailing newline.
SUBJECT_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SCOPE_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_SCOPES = 32
# What this service's operations require: read (GET items, quotes), write (changes, crypto, compute),
# admin (fault injection). Tokens may carry others, for other services; these are the ones that matter here.
READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = (READ, WRITE, ADMIN)
VERIFIED_CACHE_SIZE = 4096
_INVALID = "invalid or expired token"
_MISSING = "missing or malformed Authorization header; expected 'Bearer <token>'"


class Authenticator:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._public_key = settings.auth_public_key
        self._private_key = settings.auth_private_key
        self._audience = settings.token_audience
        self._clock = clock
        self._verified: LRUCache[bytes, tuple[Principal, float]] = LRUCache(VERIFIED_CACHE_SIZE)
        self._lock = threading.Lock()

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller behind `Authorization: Bearer <jwt>`; raises Unauthenticated otherwise."""
        if not authorization_header or len(authorization_header) > MAX_HEADER_CHARS:
            raise Unauthenticated(_MISSING)
        scheme, _, token = authorization_header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Unauthenticated(_MISSING)
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            hit = self._verified.get(digest)
        if hit is not None and self._clock() < hit[1] + LEEWAY_S:
            return hit[0]
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                # nbf and iat: PyJWT refuses a token not valid yet, or issued in the future, past this
                # leeway (without it, an issuer's clock 1 s ahead would make its tokens fail at first).
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "scope", "aud"], "verify_exp": False},
            )
        except jwt.PyJWTError:
            raise Unauthenticated(_INVALID) from None
        # Expiry is checked here, on the same clock as the cache above (PyJWT reads the wall clock).
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or self._clock() >= exp + LEEWAY_S:
            raise Unauthenticated(_INVALID)
        subject, scope = claims.get("sub"), claims.get("scope")
        if not isinstance(subject, str) or not SUBJECT_RE.fullmatch(subject) or not isinstance(scope, str):
            raise Unauthenticated(_INVALID)
        principal = Principal(subject=subject, scopes=frozenset(scope.split()))
        with self._lock:
            self._verified[digest] = (principal, float(exp))
        return principal

    def authorize(self, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            raise PermissionDenied(f"this operation needs scope {scope!r}")

    def mint(self, subject: str, scopes: Iterable[str], ttl_s: int) -> str:
        """A signed token for `subject` with `scopes`, valid for `ttl_s` seconds (1..86400)."""
        if not isinstance(subject, str) or not SUBJECT_RE.fullmatch(subject):
            raise InvalidArgument("must be 1 to 128 of A-Z a-z 0-9 . _ : @ -", field="subject")
        wanted = sorted(set(scopes))
        if len(wanted) > MAX_SCOPES or not all(isinstance(s, str) and SCOPE_RE.fullmatch(s) for s in wanted):
            raise InvalidArgument(f"at most {MAX_SCOPES} scopes of A-Z a-z 0-9 . _ : -", field="scopes")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"must be an integer from 1 to {MAX_TTL_S}", field="ttl_s")
        now = int(self._clock())
        claims = {
            "sub": subject,
            "scope": " ".join(wanted),
            "aud": self._audience,
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM)
