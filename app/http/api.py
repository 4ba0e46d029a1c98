"""The /v1 API: a thin adapter from JSON over HTTP to the operations in app.domain."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from app.domain.auth import READ, WRITE
from app.domain.errors import InvalidArgument
from app.domain.models import Item, Quote, Sealed
from app.domain.services import Services
from app.http.edge import requires
from app.http.inputs import b64, b64_field, int_field, json_body, str_field

bp = Blueprint("v1", __name__, url_prefix="/v1")


def services() -> Services:
    svc: Services = current_app.extensions["platform"]
    return svc


def item_json(item: Item) -> dict[str, Any]:
    return {"key": item.key, "value": item.value, "version": item.version, "ttl_s": item.ttl_s}


def quote_json(quote: Quote) -> dict[str, Any]:
    return {
        "symbol": quote.symbol,
        "price": quote.price,
        "currency": quote.currency,
        "as_of": quote.as_of,
        "stale": quote.stale,
    }


@bp.get("/items/<key>")
@requires(READ)
def get_item(key: str) -> Response:
    return jsonify(item_json(services().items.get(key)))


@bp.put("/items/<key>")
@requires(WRITE)
def put_item(key: str) -> Response:
    body = json_body()
    if "value" not in body:
        raise InvalidArgument("'value' is required (any JSON value)", field="value")
    item = services().items.put(
        key,
        body["value"],
        ttl_s=int_field(body, "ttl_s", required=False),
        if_version=int_field(body, "if_version", required=False),
    )
    return jsonify(item_json(item))


@bp.delete("/items/<key>")
@requires(WRITE)
def delete_item(key: str) -> Response:
    services().items.delete(key)
    return Response(status=204)


@bp.post("/crypto/encrypt")
@requires(WRITE)
def encrypt() -> Response:
    body = json_body()
    sealed = services().crypto.encrypt(b64_field(body, "plaintext"), b64_field(body, "aad", required=False))
    return jsonify(
        {"key_id": sealed.key_id, "nonce": b64(sealed.nonce), "ciphertext": b64(sealed.ciphertext)}
    )


@bp.post("/crypto/decrypt")
@requires(WRITE)
def decrypt() -> Response:
    body = json_body()
    sealed = Sealed(
        key_id=str_field(body, "key_id"),
        nonce=b64_field(body, "nonce"),
        ciphertext=b64_field(body, "ciphertext"),
    )
    plaintext = services().crypto.decrypt(sealed, b64_field(body, "aad", required=False))
    return jsonify({"plaintext": b64(plaintext)})


@bp.post("/crypto/sign")
@requires(WRITE)
def sign() -> Response:
    sig = services().crypto.sign(b64_field(json_body(), "message"))
    return jsonify({"signature": b64(sig.signature), "public_key": b64(sig.public_key)})


@bp.post("/crypto/verify")
@requires(WRITE)
def verify() -> Response:
    body = json_body()
    public_key = b64_field(body, "public_key", required=False) or None
    valid = services().crypto.verify(b64_field(body, "message"), b64_field(body, "signature"), public_key)
    return jsonify({"valid": valid})


@bp.post("/compute/hash")
@requires(WRITE)
def compute_hash() -> Response:
    body = json_body()
    params = body.get("params")
    if params is not None and (
        not isinstance(params, dict)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in params.values())
    ):
        raise InvalidArgument("'params' must be an object of integers", field="params")
    salt = b64_field(body, "salt", required=False) or None
    result = services().compute.hash(
        b64_field(body, "password"),
        algorithm=str_field(body, "algorithm", default="scrypt"),
        salt=salt,
        params=params,
    )
    return jsonify(
        {
            "algorithm": result.algorithm,
            "salt": b64(result.salt),
            "digest": b64(result.digest),
            "params": result.params,
        }
    )


@bp.post("/compute/primes")
@requires(WRITE)
def compute_primes() -> Response:
    result = services().compute.primes(int_field(json_body(), "limit") or 0)
    return jsonify({"limit": result.limit, "count": result.count})


@bp.get("/quotes/<symbol>")
@requires(READ)
def get_quote(symbol: str) -> Response:
    return jsonify(quote_json(services().quotes.get(symbol)))
