"""The slice of the domain services the gRPC adapter calls (app.domain.services.Services).

Structural types keep the adapter independent of how `app.worker.build_services` wires things, and let the
concrete services object (or anything with the same methods) plug in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from app.domain.edge import Admission
from app.domain.jobs import Job
from app.domain.models import (
    JSON,
    HashResult,
    Item,
    PrimeCount,
    Quote,
    Sealed,
    Signature,
)


class ItemsPort(Protocol):
    def get(self, key: str) -> Item: ...
    def put(
        self, key: str, value: JSON, *, ttl_s: int | None = None, if_version: int | None = None
    ) -> Item: ...
    def delete(self, key: str) -> None: ...


class CryptoPort(Protocol):
    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> Sealed: ...
    def decrypt(self, sealed: Sealed, aad: bytes = b"") -> bytes: ...
    def sign(self, message: bytes) -> Signature: ...
    def verify(self, message: bytes, signature: bytes, public_key: bytes | None = None) -> bool: ...


class ComputePort(Protocol):
    def hash(
        self,
        password: bytes,
        *,
        algorithm: str = "scrypt",
        salt: bytes | None = None,
        params: Mapping[str, int] | None = None,
    ) -> HashResult: ...
    def primes(self, limit: int) -> PrimeCount: ...


class QuotesPort(Protocol):
    def get(self, symbol: str, *, deadline_s: float | None = None) -> Quote: ...


class JobsPort(Protocol):
    def submit(self, kind: str, params: JSON, *, idempotency_key: str | None = None) -> tuple[Job, bool]: ...
    def get(self, job_id: str) -> Job: ...
    def replay_dead(self, limit: int = 100) -> list[str]: ...


class EdgePort(Protocol):
    def admit(self, authorization: str | None, scope: str) -> Admission: ...


class RpcServices(Protocol):
    """What the gRPC server needs from `build_services(settings)`."""

    @property
    def items(self) -> ItemsPort: ...
    @property
    def crypto(self) -> CryptoPort: ...
    @property
    def compute(self) -> ComputePort: ...
    @property
    def quotes(self) -> QuotesPort: ...
    @property
    def edge(self) -> EdgePort: ...
    @property
    def jobs(self) -> JobsPort: ...
