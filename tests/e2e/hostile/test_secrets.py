"""Secrets stay secret: not in any log line, span, metric, log record, /metrics or response of the run.

Runs against the package's deployment, which has explicit keys in its environment (APP_ENV=test) and
exports everything over OTLP; everything the other hostile tests of the package sent is searched too when
they ran first. Searched: the service's stdout (JSON lines), every OTLP export request (spans with their
events, metrics with their attributes, log records), /metrics, and every response body and gRPC error.
"""

from __future__ import annotations

import base64
import contextlib
import json

import pytest

from app.rpc.platform.v1 import platform_pb2 as pb
from app.settings import b64decode, parse_keyring
from tests.conftest import wait_until
from tests.e2e.hostile.conftest import Hostile, b64, http_request

pytestmark = pytest.mark.e2e

PLAINTEXTS = [b"the launch code is 0000", b"hunter2-password", b"sign me, I am secret"]


def forms(secret: bytes) -> set[str]:
    """The ways a secret could show up in text: raw, base64 and base64url (padded or not), hex."""
    out = {
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        secret.hex(),
    }
    with contextlib.suppress(UnicodeDecodeError):  # keys are random bytes, plaintexts are text
        out.add(secret.decode())
    return {form for form in out if len(form) >= 8}


def test_no_secret_in_any_signal_of_the_hostile_run(hostile: Hostile) -> None:
    token = hostile.token
    auth = [("authorization", f"Bearer {token}")]
    for plaintext in PLAINTEXTS:
        p64 = b64(plaintext)
        sealed = json.loads(
            hostile.send(
                http_request(
                    "POST", "/v1/crypto/encrypt", body=json.dumps({"plaintext": p64}).encode(), token=token
                )
            ).body
        )
        # Failures log and trace too: a tampered ciphertext, a wrong AAD, a bad signature, bad JSON.
        for bad in ({**sealed, "aad": b64(b"wrong")}, {**sealed, "ciphertext": p64}):
            r = hostile.send(
                http_request("POST", "/v1/crypto/decrypt", body=json.dumps(bad).encode(), token=token)
            )
            assert r.status == 400
        hostile.send(
            http_request("POST", "/v1/crypto/sign", body=json.dumps({"message": p64}).encode(), token=token)
        )
        hostile.send(
            http_request(
                "POST",
                "/v1/crypto/verify",
                body=json.dumps({"message": p64, "signature": p64}).encode(),
                token=token,
            )
        )
        hostile.send(
            http_request(
                "POST",
                "/v1/compute/hash",
                body=json.dumps({"password": p64, "params": {"n": 3}}).encode(),
                token=token,
            )
        )
        hostile.send(
            http_request("POST", "/v1/compute/hash", body=b'{"password": "' + plaintext + b'"', token=token)
        )
        hostile.send(
            http_request(
                "PUT",
                "/v1/items/secret",
                body=b'{"value": "' + p64.encode() + b'", "ttl_s": "x"}',
                token=token,
            )
        )
        hostile.rpc("Encrypt", pb.EncryptRequest(plaintext=plaintext).SerializeToString(), auth)
        hostile.rpc(
            "Decrypt",
            pb.DecryptRequest(key_id="h1", nonce=b"n" * 12, ciphertext=plaintext).SerializeToString(),
            auth,
        )
        hostile.rpc("Hash", pb.HashRequest(password=plaintext, algorithm="md5").SerializeToString(), auth)
        hostile.rpc("Sign", pb.SignRequest(message=plaintext).SerializeToString(), auth)
    # The token where it does not belong: in a path, a query, a header the service logs, a bad scheme.
    hostile.send(http_request("GET", f"/v1/items/{token}"))
    hostile.send(http_request("GET", f"/v1/items/k1?access_token={token}", token=token))
    hostile.send(
        http_request("GET", "/v1/items/k1", headers={"User-Agent": f"Bearer {token}", "X-Request-ID": token})
    )
    hostile.send(http_request("GET", "/v1/items/k1", headers={"Authorization": f"Token {token}"}))
    hostile.send(http_request("GET", "/v1/items/k1", headers={"Authorization": f"Bearer {token}\x01"}))
    hostile.rpc("GetItem", b"", [("authorization", f"Basic {token}"), ("x-request-id", token)])
    hostile.rpc("GetItem", b"\xff", [("authorization", f"Bearer {token}x")])

    # Let the exporters flush what the run produced (batches every 200 ms, metrics every 500 ms).
    before = len(hostile.receiver.received.raw)
    wait_until(
        lambda: len(hostile.receiver.received.raw) > before + 3, timeout=20, message="fresh OTLP exports"
    )
    metrics_text = hostile.send(http_request("GET", "/metrics")).body

    keys = hostile.keys
    secrets: dict[str, set[str]] = {
        "token": {token, token.split(".")[2]},
        "AUTH_SIGNING_KEY": {keys["AUTH_SIGNING_KEY"]}
        | forms(b64decode(keys["AUTH_SIGNING_KEY"], name="k", size=32)),
        "CRYPTO_SIGNING_KEY": {keys["CRYPTO_SIGNING_KEY"]}
        | forms(b64decode(keys["CRYPTO_SIGNING_KEY"], name="k", size=32)),
        "CRYPTO_KEYS": {part.split(":")[1] for part in keys["CRYPTO_KEYS"].split(",")}
        | {form for key in parse_keyring(keys["CRYPTO_KEYS"], name="k").values() for form in forms(key)},
    }
    for i, plaintext in enumerate(PLAINTEXTS):
        secrets[f"plaintext {i}"] = forms(plaintext)

    haystacks: dict[str, bytes] = {
        "stdout": hostile.api.log.text().encode(),
        "upstream stdout": hostile.upstream.log.text().encode(),
        "OTLP exports": b"\n".join(hostile.receiver.received.raw),
        "/metrics": metrics_text,
        "responses": b"\n".join(hostile.responses),
    }
    assert all(haystacks.values()), [name for name, text in haystacks.items() if not text]
    assert b"/v1/crypto/decrypt" in haystacks["OTLP exports"], "the run's spans were exported"
    leaks = [
        f"{secret} in {where}"
        for secret, values in secrets.items()
        for where, text in haystacks.items()
        if any(value.encode() in text for value in values)
    ]
    assert leaks == []
