"""Job kinds: their parameters are checked with the field named, and they run through the domain."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from app.domain.compute import ComputeService
from app.domain.errors import Conflict, InvalidArgument, PayloadTooLarge
from app.domain.items import ItemStore
from app.domain.job_kinds import BATCH_MAX, JobKinds
from app.runtime.pool import WorkerPool
from app.settings import Settings


@pytest.fixture(scope="module")
def compute() -> Iterator[ComputeService]:
    pool = WorkerPool(1, 4, 10.0, preload=["app.domain.compute"])
    pool.start()
    yield ComputeService(pool)
    pool.close(wait=False, timeout=5)


@pytest.fixture
def kinds(compute: ComputeService, make_settings: Callable[..., Settings]) -> Iterator[JobKinds]:
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    items = ItemStore(client, settings, None)
    yield JobKinds(compute, items)
    client.close()


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("nope", {}, "kind"),
        ("primes", [], "params"),
        ("primes", {"limits": []}, "params.limits"),
        ("primes", {"limits": [10] * (BATCH_MAX + 1)}, "params.limits"),
        ("primes", {"limits": [10, 1]}, "params.limits[1]"),
        ("primes", {"limits": [True]}, "params.limits[0]"),
        ("primes", {"limits": [10], "extra": 1}, "params.extra"),
        ("hash", {"inputs": ["a"], "algorithm": "md5"}, "params.algorithm"),
        ("hash", {"inputs": [""]}, "params.inputs[0]"),
        ("hash", {"inputs": ["a"], "params": 3}, "params.params"),
        ("import", {"items": {}}, "params.items"),
        ("import", {"items": {"bad key": 1}}, "params.items.bad key"),
        ("primes", {"limits": [float("nan")]}, "params"),
    ],
)
def test_bad_parameters_name_their_field(kinds: JobKinds, kind: str, params: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        kinds.check(kind, params)
    assert info.value.field == field


def test_oversized_parameters_are_refused(kinds: JobKinds) -> None:
    with pytest.raises(PayloadTooLarge):
        kinds.check("import", {"items": {"k": "x" * (1024 * 1024)}})


def test_primes_and_hashes_run_in_the_pool(kinds: JobKinds) -> None:
    assert kinds.run("primes", {"limits": [10, 100]}, fence=1) == {"counts": [4, 25]}
    result = kinds.run("hash", {"inputs": ["pw"], "params": {"iterations": 1000}}, fence=1)
    (one,) = result["hashes"]
    salt = base64.b64decode(one["salt"])
    assert base64.b64decode(one["digest"]) == hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000, dklen=32)


def test_an_import_writes_fenced_items(kinds: JobKinds, make_settings: Callable[..., Settings]) -> None:
    assert kinds.run("import", {"items": {"a": 1, "b": [2]}}, fence=5) == {"imported": 2}
    with pytest.raises(Conflict):
        kinds.run("import", {"items": {"a": "stale"}}, fence=4)
