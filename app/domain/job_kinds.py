"""What a job can do: each kind checks its parameters (when submitted, and again before it runs) and does its
work through the existing domain: prime counts and hashes in the CPU pool, item imports through the item
store, fenced with the attempt's token.

Parameters are stored in Redis with the job and come back in its status: never put secrets in them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.domain.compute import ALGORITHMS, PRIMES_MAX, PRIMES_MIN, ComputeService
from app.domain.errors import InvalidArgument, PayloadTooLarge
from app.domain.items import KEY_RE, ItemStore
from app.domain.models import JSON

BATCH_MAX = 100  # prime limits or hash inputs in one job
INPUT_MAX_CHARS = 1024
IMPORT_MAX_ITEMS = 1000
PARAMS_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class JobKind:
    name: str
    check: Callable[[Mapping[str, JSON]], None]  # raises InvalidArgument naming the field
    run: Callable[[Mapping[str, JSON], int], JSON]  # (params, fencing token) -> result


class JobKinds:
    """The kinds this service runs, over the domain's services."""

    def __init__(self, compute: ComputeService, items: ItemStore) -> None:
        self._compute = compute
        self._items = items
        self.kinds = {
            kind.name: kind
            for kind in (
                JobKind("primes", _check_primes, self._primes),
                JobKind("hash", _check_hash, self._hash),
                JobKind("import", _check_import, self._import),
            )
        }

    def check(self, kind: str, params: JSON) -> None:
        if kind not in self.kinds:
            raise InvalidArgument(f"unknown job kind; expected one of {sorted(self.kinds)}", field="kind")
        if not isinstance(params, dict):
            raise InvalidArgument("must be a JSON object", field="params")
        try:
            size = len(json.dumps(params, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
            raise InvalidArgument("must be a JSON object (no NaN, valid Unicode)", field="params") from None
        if size > PARAMS_MAX_BYTES:
            raise PayloadTooLarge(f"must be at most {PARAMS_MAX_BYTES} bytes as JSON", field="params")
        self.kinds[kind].check(params)

    def run(self, kind: str, params: JSON, fence: int) -> JSON:
        self.check(kind, params)
        return self.kinds[kind].run(params, fence)

    def _primes(self, params: Mapping[str, JSON], _fence: int) -> JSON:
        return {"counts": [self._compute.primes(limit).count for limit in params["limits"]]}

    def _hash(self, params: Mapping[str, JSON], _fence: int) -> JSON:
        algorithm, cost = params.get("algorithm", "pbkdf2"), params.get("params")
        results = [
            self._compute.hash(text.encode(), algorithm=algorithm, params=cost) for text in params["inputs"]
        ]
        return {
            "algorithm": algorithm,
            "hashes": [{"salt": _b64(r.salt), "digest": _b64(r.digest), "params": r.params} for r in results],
        }

    def _import(self, params: Mapping[str, JSON], fence: int) -> JSON:
        items: Mapping[str, JSON] = params["items"]
        for key, value in items.items():
            self._items.put(key, value, fence=fence)
        return {"imported": len(items)}


def _check_primes(params: Mapping[str, JSON]) -> None:
    _only(params, {"limits"})
    limits = _batch(params.get("limits"), "params.limits")
    for i, limit in enumerate(limits):
        if isinstance(limit, bool) or not isinstance(limit, int) or not PRIMES_MIN <= limit <= PRIMES_MAX:
            raise InvalidArgument(
                f"must be an integer from {PRIMES_MIN} to {PRIMES_MAX}", field=f"params.limits[{i}]"
            )


def _check_hash(params: Mapping[str, JSON]) -> None:
    _only(params, {"inputs", "algorithm", "params"})  # params: as for one hash (app.domain.compute)
    if not isinstance(params.get("params", {}), dict):
        raise InvalidArgument("must be an object", field="params.params")
    if params.get("algorithm", "pbkdf2") not in ALGORITHMS:
        raise InvalidArgument(f"must be one of {list(ALGORITHMS)}", field="params.algorithm")
    for i, text in enumerate(_batch(params.get("inputs"), "params.inputs")):
        if not isinstance(text, str) or not 1 <= len(text) <= INPUT_MAX_CHARS:
            raise InvalidArgument(
                f"must be a string of 1 to {INPUT_MAX_CHARS} characters", field=f"params.inputs[{i}]"
            )


def _check_import(params: Mapping[str, JSON]) -> None:
    _only(params, {"items"})
    items = params.get("items")
    if not isinstance(items, dict) or not 1 <= len(items) <= IMPORT_MAX_ITEMS:
        raise InvalidArgument(f"must be an object of 1 to {IMPORT_MAX_ITEMS} items", field="params.items")
    for key in items:
        if not KEY_RE.fullmatch(key):
            raise InvalidArgument(
                "keys must be 1 to 128 of A-Z a-z 0-9 . _ : -", field=f"params.items.{key[:40]}"
            )


def _only(params: Mapping[str, JSON], allowed: set[str]) -> None:
    if unknown := sorted(set(params) - allowed):
        raise InvalidArgument(
            f"unknown parameter; expected {sorted(allowed)}", field=f"params.{unknown[0][:40]}"
        )


def _batch(value: JSON, field: str) -> list[JSON]:
    if not isinstance(value, list) or not 1 <= len(value) <= BATCH_MAX:
        raise InvalidArgument(f"must be an array of 1 to {BATCH_MAX} values", field=field)
    return value


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
