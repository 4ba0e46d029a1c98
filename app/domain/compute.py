"""CPU-bound operations: password hashing (scrypt, PBKDF2) and a prime count.

Both always run in the worker pool, never on a request thread: a 100 ms hash on a request thread would
hold the GIL against every other request of the worker (and the gRPC event loop). Every cost parameter
is bounded here, before anything is queued, so no request can ask for unbounded memory or CPU.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from app.domain.errors import InvalidArgument
from app.domain.models import HashResult, PrimeCount

T = TypeVar("T")

ALGORITHMS = ("scrypt", "pbkdf2")
# The worker-pool tasks this module runs (their metric series exist from the start).
HASH_TASK, PRIMES_TASK = "hash", "primes"
POOL_TASKS = (HASH_TASK, PRIMES_TASK)
SCRYPT_DEFAULTS = {"n": 2**14, "r": 8, "p": 1}
PBKDF2_DEFAULTS = {"iterations": 600_000}  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256
SCRYPT_MAX_MEMORY = 64 * 1024 * 1024
PASSWORD_MAX_BYTES = 1024
SALT_MIN_BYTES, SALT_MAX_BYTES, SALT_DEFAULT_BYTES = 8, 64, 16
DIGEST_BYTES = 32
PRIMES_MIN, PRIMES_MAX = 2, 5_000_000


def scrypt_memory(n: int, r: int, p: int) -> int:
    """Bytes OpenSSL's scrypt allocates: V (128*r*(n+2)) plus B (128*r*p)."""
    return 128 * r * (n + p + 2)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAX_MEMORY + 1024 * 1024, dklen=DIGEST_BYTES
    )


def _pbkdf2(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, dklen=DIGEST_BYTES)


def count_primes(limit: int) -> int:
    """Primes <= limit by a sieve of Eratosthenes over odd numbers, in plain Python on purpose.

    The point is real CPU work in the pool (about a second at the upper bound), not the fastest sieve.
    """
    if limit < 2:
        return 0
    size = (limit - 1) // 2  # index i stands for the odd number 2*i + 3
    composite = bytearray(size)
    i = 0
    while (2 * i + 3) ** 2 <= limit:
        if not composite[i]:
            step = 2 * i + 3
            for j in range((step * step - 3) // 2, size, step):
                composite[j] = 1
        i += 1
    return 1 + size - sum(composite)  # 1 for the prime 2


class TaskPool(Protocol):
    """What the domain needs from a pool of worker processes (app.runtime.pool.WorkerPool implements it)."""

    def run(self, task: str, fn: Callable[..., T], *args: Any) -> T: ...
    def start(self) -> None: ...
    def close(self, wait: bool = True, timeout: float | None = None) -> None: ...


class ComputeService:
    def __init__(self, pool: TaskPool) -> None:
        self._pool = pool

    def hash(
        self,
        password: bytes,
        *,
        algorithm: str = "scrypt",
        salt: bytes | None = None,
        params: Mapping[str, int] | None = None,
    ) -> HashResult:
        if not 1 <= len(password) <= PASSWORD_MAX_BYTES:
            raise InvalidArgument(f"must be 1 to {PASSWORD_MAX_BYTES} bytes", field="password")
        if algorithm not in ALGORITHMS:
            raise InvalidArgument("must be 'scrypt' or 'pbkdf2'", field="algorithm")
        if salt is None:
            salt = os.urandom(SALT_DEFAULT_BYTES)
        elif not SALT_MIN_BYTES <= len(salt) <= SALT_MAX_BYTES:
            raise InvalidArgument(f"must be {SALT_MIN_BYTES} to {SALT_MAX_BYTES} bytes", field="salt")
        if algorithm == "scrypt":
            chosen = _params(params, SCRYPT_DEFAULTS)
            n, r, p = chosen["n"], chosen["r"], chosen["p"]
            _bounded(n, 2, 2**15, "params.n")
            if n & (n - 1):
                raise InvalidArgument("must be a power of two from 2 to 32768", field="params.n")
            _bounded(r, 1, 16, "params.r")
            _bounded(p, 1, 4, "params.p")
            if scrypt_memory(n, r, p) >= SCRYPT_MAX_MEMORY:
                raise InvalidArgument("n and r need more than 64 MiB; lower one of them", field="params.r")
            digest = self._pool.run(HASH_TASK, _scrypt, password, salt, n, r, p)
        else:
            chosen = _params(params, PBKDF2_DEFAULTS)
            _bounded(chosen["iterations"], 1, 600_000, "params.iterations")
            digest = self._pool.run(HASH_TASK, _pbkdf2, password, salt, chosen["iterations"])
        return HashResult(algorithm=algorithm, salt=salt, digest=digest, params=chosen)

    def primes(self, limit: int) -> PrimeCount:
        _bounded(limit, PRIMES_MIN, PRIMES_MAX, "limit")
        return PrimeCount(limit=limit, count=self._pool.run(PRIMES_TASK, count_primes, limit))


def _params(given: Mapping[str, int] | None, defaults: Mapping[str, int]) -> dict[str, int]:
    chosen = dict(defaults)
    for name, value in (given or {}).items():
        if name not in defaults:
            raise InvalidArgument(
                f"unknown parameter; expected one of {sorted(defaults)}", field=f"params.{name}"
            )
        chosen[name] = value
    return chosen


def _bounded(value: object, low: int, high: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"must be an integer from {low} to {high}", field=field)
