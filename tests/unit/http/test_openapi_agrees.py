"""/openapi.json states the constraints the API enforces: what a body schema allows is not refused for a
schema reason, and what it forbids is refused with 400 naming the field. Fails as soon as they diverge.

Bodies come from the served document itself (`from_schema` below, for the keywords it uses), go through
the real Flask app over the real services (redis-server, the worker pool), and are judged by a JSON Schema
validator.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.domain.auth import Authenticator
from app.http import create_app
from app.settings import Settings
from app.worker import build_services

AGREE = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Rules no single field's schema can state; a body the schema allows may still get 400 for exactly these.
SEMANTIC = {
    ("/v1/crypto/decrypt", "ciphertext"): "could not be decrypted",  # wrong key id, tag or AAD
    ("/v1/crypto/verify", "public_key"): "not a valid Ed25519 public key",  # 32 bytes, not a curve point
    ("/v1/compute/hash", "params.r"): "64 MiB",  # scrypt's memory, n and r together
}
OPERATIONS = [
    ("/v1/crypto/encrypt", "post"),
    ("/v1/crypto/decrypt", "post"),
    ("/v1/crypto/sign", "post"),
    ("/v1/crypto/verify", "post"),
    ("/v1/compute/hash", "post"),
    ("/v1/compute/primes", "post"),
    ("/v1/items/{key}", "put"),
    ("/admin/chaos", "post"),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of `schema`, for the JSON Schema keywords the document uses (anything else fails loudly)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind is None:
        return json_values  # any JSON value
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(low, high)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(max_size=20)
    if kind == "object" or kind == ["object", "null"]:
        return objects(schema)
    raise AssertionError(f"from_schema: no strategy for {schema}")


@st.composite
def objects(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    properties = dict(schema.get("properties", {}))
    if "if" in schema:  # the only conditional in the document: the hash body's params
        condition = schema["if"]["properties"]
        chosen = draw(st.sampled_from([None, *from_enum(schema["properties"]["algorithm"])]))
        branch = "then" if all(chosen == c.get("const") for c in condition.values()) else "else"
        properties.update(schema[branch]["properties"])
        properties.pop("algorithm")
        out = {} if chosen is None else {"algorithm": chosen}
    else:
        out = {}
    required = set(schema.get("required", []))
    for name, sub in sorted(properties.items()):
        if name in required or draw(st.booleans()):
            out[name] = draw(from_schema(sub))
    return out


def from_enum(schema: dict[str, Any]) -> list[Any]:
    return list(schema["enum"])


@pytest.fixture(scope="module")
def served(redis_server: str) -> Iterator[tuple[FlaskClient, dict[str, Any], dict[str, str]]]:
    from app.settings import load_settings
    from tests.unit.conftest import settings_env

    settings_: Settings = load_settings(settings_env(redis_url=redis_server, rate_limit="1000000/second"))
    services = build_services(settings_)
    services.start()
    app: Flask = create_app(settings_, services, instance_id="openapi")
    client = app.test_client()
    token = Authenticator(settings_).mint("schema", ["read", "write", "admin"], 600)
    doc = client.get("/openapi.json").get_json()
    try:
        yield client, doc, {"Authorization": f"Bearer {token}"}
    finally:
        client.post("/admin/chaos", json={"reset": True}, headers={"Authorization": f"Bearer {token}"})
        services.close()


def body_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


def call(client: FlaskClient, auth: dict[str, str], path: str, method: str, body: Any) -> Any:
    target = path.replace("{key}", "schema-key")
    send: Callable[..., Any] = getattr(client, method)
    return send(target, data=json.dumps(body), headers={**auth, "Content-Type": "application/json"})


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_bodies_the_schema_allows_are_not_refused_for_a_schema_reason(
    served: tuple[FlaskClient, dict[str, Any], dict[str, str]], path: str, method: str
) -> None:
    client, doc, auth = served
    schema = body_schema(doc, path, method)

    @AGREE
    @given(from_schema(schema))
    def one(body: dict[str, Any]) -> None:
        if path == "/admin/chaos":
            body = {**body, "reset": True}  # valid either way; never leave faults behind
        r = call(client, auth, path, method, body)
        if r.status_code == 400:
            problem = r.get_json()
            reason = SEMANTIC.get((path, problem.get("field")))
            assert reason is not None and reason in problem["detail"], (body, problem)
        else:
            assert r.status_code < 400 or r.status_code == 409, (body, r.status_code, r.get_data())

    one()


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_bodies_the_schema_forbids_are_refused_with_400_naming_the_field(
    served: tuple[FlaskClient, dict[str, Any], dict[str, str]], path: str, method: str
) -> None:
    client, doc, auth = served
    schema = body_schema(doc, path, method)
    validator = Draft202012Validator(schema)
    names = sorted(schema["properties"])

    @AGREE
    @given(from_schema(schema), st.sampled_from(names), json_values, st.data())
    def one(valid: dict[str, Any], name: str, value: Any, data: st.DataObject) -> None:
        body = {**valid, name: value}
        if data.draw(st.integers(0, 3)) == 0 and name in schema.get("required", []):
            del body[name]
        if validator.is_valid(body):
            return  # this mutation happened to stay valid
        r = call(client, auth, path, method, body)
        assert r.status_code == 400, (body, r.status_code, r.get_data())
        field = r.get_json().get("field", "")
        assert field.split(".")[0] in {*names, "body"}, (body, field)

    one()
