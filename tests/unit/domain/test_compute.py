from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.domain.compute import ComputeService, count_primes, scrypt_memory
from app.domain.errors import InvalidArgument
from app.runtime.pool import WorkerPool


@pytest.fixture(scope="module")
def compute() -> Iterator[ComputeService]:
    pool = WorkerPool(1, 4, 10.0, preload=["app.domain.compute"])
    pool.start()
    yield ComputeService(pool)
    pool.close(wait=False, timeout=5)


def test_scrypt_matches_hashlib_and_runs_in_the_pool(
    compute: ComputeService, spans: InMemorySpanExporter
) -> None:
    salt = b"NaCl-salt-16byte"
    result = compute.hash(b"password", salt=salt, params={"n": 1024, "r": 8, "p": 1})
    expected = hashlib.scrypt(b"password", salt=salt, n=1024, r=8, p=1, dklen=32)
    assert (result.algorithm, result.salt, result.digest) == ("scrypt", salt, expected)
    assert result.params == {"n": 1024, "r": 8, "p": 1}
    assert [s.name for s in spans.get_finished_spans() if s.name.startswith("pool.")] == ["pool.hash"]


def test_pbkdf2_matches_hashlib_with_a_random_salt(compute: ComputeService) -> None:
    result = compute.hash(b"pw", algorithm="pbkdf2", params={"iterations": 1000})
    assert len(result.salt) == 16
    assert result.digest == hashlib.pbkdf2_hmac("sha256", b"pw", result.salt, 1000, dklen=32)
    assert compute.hash(b"pw", algorithm="pbkdf2", params={"iterations": 1000}).salt != result.salt


def test_default_scrypt_parameters_fit_the_memory_bound(compute: ComputeService) -> None:
    result = compute.hash(b"pw")
    assert result.params == {"n": 16384, "r": 8, "p": 1}
    assert scrypt_memory(2**15, 15, 4) < 64 * 1024 * 1024  # the largest accepted r at n = 2**15


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"password": b""}, "password"),
        ({"password": b"x" * 1025}, "password"),
        ({"algorithm": "md5"}, "algorithm"),
        ({"salt": b"short"}, "salt"),
        ({"salt": os.urandom(65)}, "salt"),
        ({"params": {"n": 1000}}, "params.n"),
        ({"params": {"n": 2**16}}, "params.n"),
        ({"params": {"n": 1}}, "params.n"),
        ({"params": {"n": "1024"}}, "params.n"),
        ({"params": {"r": 0}}, "params.r"),
        ({"params": {"r": 17}}, "params.r"),
        ({"params": {"p": 5}}, "params.p"),
        ({"params": {"n": 2**15, "r": 16}}, "params.r"),  # 64 MiB and more
        ({"params": {"iterations": 5}}, "params.iterations"),
        ({"algorithm": "pbkdf2", "params": {"iterations": 0}}, "params.iterations"),
        ({"algorithm": "pbkdf2", "params": {"iterations": 600_001}}, "params.iterations"),
        ({"algorithm": "pbkdf2", "params": {"iterations": True}}, "params.iterations"),
    ],
)
def test_bad_hash_requests_name_the_field(
    compute: ComputeService, kwargs: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {"password": b"pw", **kwargs}
    password = args.pop("password")
    with pytest.raises(InvalidArgument) as info:
        compute.hash(password, **args)
    assert info.value.field == field


def test_primes_counts_through_the_pool(compute: ComputeService, spans: InMemorySpanExporter) -> None:
    assert compute.primes(100).count == 25
    assert compute.primes(2).count == 1
    assert [s.name for s in spans.get_finished_spans() if s.name.startswith("pool.")] == ["pool.primes"] * 2


@pytest.mark.parametrize("limit", [1, 0, -5, 5_000_001, True, 2.5])
def test_bad_prime_limits(compute: ComputeService, limit: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        compute.primes(limit)
    assert info.value.field == "limit"


def test_count_primes_against_known_values() -> None:
    known = {2: 1, 3: 2, 4: 2, 10: 4, 97: 25, 1000: 168, 10_000: 1229, 1_000_000: 78_498}
    assert {n: count_primes(n) for n in known} == known
