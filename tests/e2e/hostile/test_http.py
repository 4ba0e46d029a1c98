"""Property-based fuzzing of every HTTP route of the real service (gunicorn, 2 workers, redis, upstream).

Every route and method of /openapi.json (the probes, /metrics, /openapi.json, /v1 and /admin included), with
odd methods, paths (odd characters, %-encoded bytes, overlong keys), headers, content types, bodies (JSON of
the wrong shape, not JSON, invalid UTF-8, huge numbers, deep nesting) and encodings, sent as raw bytes.
Whatever comes in: never a 5xx, every 4xx is problem+json with its own status, and both workers stay
alive and ready. Examples are derandomized and bounded, so every run sends the same requests.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.hostile.conftest import Hostile, b64, http_request

pytestmark = pytest.mark.e2e

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The fields each operation reads, so that bodies are often almost right.
FIELDS = {
    "/v1/items/{key}": ["value", "ttl_s", "if_version"],
    "/v1/crypto/encrypt": ["plaintext", "aad"],
    "/v1/crypto/decrypt": ["key_id", "nonce", "ciphertext", "aad"],
    "/v1/crypto/sign": ["message"],
    "/v1/crypto/verify": ["message", "signature", "public_key"],
    "/v1/compute/hash": ["password", "salt", "algorithm", "params"],
    "/v1/compute/primes": ["limit"],
    "/v1/jobs": ["kind", "params", "idempotency_key"],
    "/admin/jobs/replay": ["limit"],
    "/admin/chaos": [
        *("redis_error_rate", "loop_block_ms", "gil_block_ms", "job_failure_rate", "job_delay_ms"),
        *("ttl_s", "reset"),
    ],
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_values = st.one_of(
    json_values,
    st.binary(max_size=80).map(b64),  # well-formed base64 of any length
    st.sampled_from(["scrypt", "pbkdf2", "h1", "AAAAAAAAAAAAAAAA", "%%%", "-_-_", "cA==\n", "é", "\ud800"]),
    st.dictionaries(st.sampled_from(["n", "r", "p", "iterations", "x"]), st.integers(-5, 2**40), max_size=3),
)
RAW_TEXT_BODIES = [
    b'{"value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"value": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"limit": 1' + b"0" * 5000 + b"}",
    b'{"value": 1e999, "ttl_s": 1e400}',
    b'{"value": NaN}',
    b'{"value": "\\ud800"}',
    b'{"plaintext": "\xff\xfe"}',
    b"\xef\xbb\xbf{}",
    '{"limit": 10}'.encode("utf-16"),
    b'{"value": 1, "value": 2}',
    b"[]",
    b"",
    b"{",
]


def bodies(template: str) -> st.SearchStrategy[bytes]:
    names = FIELDS.get(template, ["value"])
    objects = st.fixed_dictionaries({}, optional=dict.fromkeys(names, field_values))
    return st.one_of(
        objects.map(lambda o: json.dumps(o).encode("utf-8", "surrogatepass")),
        json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
        st.sampled_from(RAW_TEXT_BODIES),
        st.binary(max_size=64),
    )


path_segments = st.one_of(
    st.sampled_from(["k1", "ACME", "..", ".", "%2F", "%00", "abc%0A", "%ff%fe", "a%20b", "%25", "%E2%80%AE"]),
    st.text(max_size=30).map(lambda s: urllib.parse.quote(s.encode("utf-8", "surrogatepass"), safe="")),
    st.integers(min_value=100, max_value=6000).map(lambda n: "k" * n),  # overlong keys and request lines
    st.binary(min_size=1, max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.sampled_from(["\xff", "a b", "\x7f", "é"]),  # raw bytes gunicorn's parser must refuse
)
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=200)
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "application/problem+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    None,
]
ODD_METHODS = ["HEAD", "OPTIONS", "PATCH", "TRACE", "FOO", "get", "CONNECT"]


def routes(hostile: Hostile) -> list[tuple[str, list[str]]]:
    r = hostile.send(http_request("GET", "/openapi.json"))
    doc: dict[str, Any] = json.loads(r.body)
    return [
        (path, [m.upper() for m in item if m != "parameters"]) for path, item in sorted(doc["paths"].items())
    ]


def assert_a_client_error_at_most(
    method: str, target: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    where = f"{method} {target[:200]!r} -> {status} {body[:300]!r}"
    assert status < 500, where
    if status >= 400 and method != "HEAD":
        assert headers.get("content-type", "").startswith("application/problem+json"), where
        assert json.loads(body)["status"] == status, where


def test_fuzz_every_route_method_path_header_and_body(hostile: Hostile) -> None:
    table = routes(hostile)
    assert {path for path, _ in table} >= {"/healthz", "/readyz", "/metrics", "/openapi.json", "/admin/chaos"}
    token = hostile.token

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
        template, methods = draw(st.sampled_from(table))
        method = draw(st.sampled_from(methods) | st.sampled_from(ODD_METHODS))
        target = template
        for name in ("{key}", "{symbol}"):
            if name in target:
                target = target.replace(name, draw(path_segments))
        if draw(st.booleans()):
            target += "?" + draw(st.sampled_from(["a=1", "a=%ff", "token=x&token=y", "=", "x" * 300]))
        headers = draw(st.dictionaries(header_names, header_values, max_size=4))
        auth = draw(st.sampled_from([token, token, None, "garbage", token + "x", "Basic dXNlcjpwYXNz"]))
        if draw(st.booleans()):
            headers["X-Request-ID"] = draw(header_values)
        if draw(st.integers(0, 9)) == 0:
            headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "br", "identity", "x"]))
        body = draw(bodies(template)) if draw(st.integers(0, 4)) else b""
        content_type = draw(st.sampled_from(CONTENT_TYPES))
        if draw(st.integers(0, 9)) == 0:  # the same body, chunked
            chunked = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
            raw = http_request(method, target, token=auth, headers=headers, body=b"", content_type=None)
            kind = content_type or "application/json"
            extra = f"Transfer-Encoding: chunked\r\nContent-Type: {kind}\r\n\r\n".encode()
            raw = raw.replace(b"Content-Length: 0\r\n", b"")[:-2] + extra + chunked
        else:
            raw = http_request(
                method, target, token=auth, headers=headers, body=body, content_type=content_type
            )
        return method, target, raw

    @FUZZ
    @given(requests())
    def one(request: tuple[str, str, bytes]) -> None:
        method, target, raw = request
        r = hostile.send(raw)
        assert_a_client_error_at_most(method, target, r.status, r.headers, r.body)

    one()
    hostile.assert_still_ready()


def head(line: str, *fields: str, body: bytes = b"", end: bytes = b"\r\n") -> bytes:
    lines = [line, "Host: h", *fields, "", ""]
    return end.join(part.encode("latin-1") for part in lines) + body


PRIMES, SIGN = "POST /v1/compute/primes HTTP/1.1", "POST /v1/crypto/sign HTTP/1.1"
CHUNKED = "Transfer-Encoding: chunked"
REFUSED = [
    ("two Content-Length", head(PRIMES, "Content-Length: 2", "Content-Length: 3", body=b"{}")),
    ("negative Content-Length", head(PRIMES, "Content-Length: -1")),
    ("Transfer-Encoding gzip", head(SIGN, "Transfer-Encoding: gzip")),
    ("Content-Length and chunked", head(SIGN, "Content-Length: 4", CHUNKED, body=b"0\r\n\r\n")),
    ("bad chunk size", head(SIGN, CHUNKED, body=b"zz\r\n{}\r\n0\r\n\r\n")),
    ("control character in a header", head("GET /v1/items/k HTTP/1.1", "X-A: a\x01b")),
    ("folded header", head("GET /v1/items/k HTTP/1.1", "X-A: a", " b")),
    ("header without a colon", head("GET /v1/items/k HTTP/1.1", "nonsense")),
    ("HTTP/2.0 in an HTTP/1 line", head("GET / HTTP/2.0")),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("unmet Expect", head(PRIMES, "Expect: junk", "Content-Length: 0")),
    ("bare LF line ends", head("GET /healthz HTTP/1.1", end=b"\n")),
    ("NUL in the request line", head("GET /v1/items/a\x00b HTTP/1.1")),
    ("no version", b"GET /healthz\r\n\r\n"),
]


@pytest.mark.parametrize(("label", "raw"), REFUSED, ids=[label for label, _ in REFUSED])
def test_what_gunicorns_parser_refuses_is_problem_json_too(hostile: Hostile, label: str, raw: bytes) -> None:
    r = hostile.send(raw)
    assert 400 <= r.status < 500, (label, r.status, r.body)
    assert r.headers["content-type"] == "application/problem+json", (label, r.headers)
    assert json.loads(r.body)["status"] == r.status
