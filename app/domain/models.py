"""Values the operations take and return; plain data, shared by both transports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = Any  # a value json.loads could return


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    value: JSON
    version: int
    ttl_s: int | None = None  # remaining TTL in seconds when one is set


@dataclass(frozen=True, slots=True)
class Sealed:
    """AES-256-GCM output; `ciphertext` carries the 16-byte tag at its end."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Signature:
    signature: bytes
    public_key: bytes  # raw 32-byte Ed25519 public key


@dataclass(frozen=True, slots=True)
class HashResult:
    algorithm: str  # "scrypt" | "pbkdf2"
    salt: bytes
    digest: bytes
    params: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PrimeCount:
    limit: int
    count: int


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    price: float
    currency: str
    as_of: float  # unix seconds, when the upstream produced it
    stale: bool = False  # True when served from the last good value because the upstream failed


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    scopes: frozenset[str]
