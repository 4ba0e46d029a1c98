from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.domain.crypto import CryptoService
from app.domain.errors import InvalidArgument
from app.domain.models import Sealed
from app.settings import Settings, b64encode


def service(keys: dict[str, bytes] | None = None) -> CryptoService:
    return CryptoService(keys or {"k1": os.urandom(32)}, Ed25519PrivateKey.generate())


def test_round_trip_with_and_without_aad() -> None:
    crypto = service()
    sealed = crypto.encrypt(b"attack at dawn")
    assert crypto.decrypt(sealed) == b"attack at dawn"
    bound = crypto.encrypt(b"secret", aad=b"user:42")
    assert crypto.decrypt(bound, aad=b"user:42") == b"secret"
    assert crypto.encrypt(b"").ciphertext != b""  # even empty plaintext carries its tag
    assert crypto.decrypt(crypto.encrypt(b"")) == b""


def test_fresh_nonce_every_time() -> None:
    crypto = service()
    sealed = [crypto.encrypt(b"same") for _ in range(50)]
    assert len({s.nonce for s in sealed}) == 50
    assert all(len(s.nonce) == 12 for s in sealed)
    assert len({s.ciphertext for s in sealed}) == 50


def test_key_rotation_old_kid_still_decrypts(make_settings: Callable[..., Settings]) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    before = CryptoService.from_settings(make_settings(crypto_keys=f"old:{b64encode(old_key)}"))
    sealed_before = before.encrypt(b"from last year")
    assert sealed_before.key_id == "old"
    after = CryptoService.from_settings(
        make_settings(crypto_keys=f"new:{b64encode(new_key)},old:{b64encode(old_key)}")
    )
    assert after.decrypt(sealed_before) == b"from last year"
    assert after.encrypt(b"now").key_id == "new"  # the first key encrypts
    with pytest.raises(InvalidArgument):
        before.decrypt(after.encrypt(b"now"))  # a key the old deployment never had


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def test_every_tampering_fails_with_the_same_message() -> None:
    crypto = service({"k1": os.urandom(32), "k2": os.urandom(32)})
    sealed = crypto.encrypt(b"payload", aad=b"ctx")
    attempts = {
        "ciphertext": (replace(sealed, ciphertext=_flip(sealed.ciphertext, 0)), b"ctx"),
        "tag": (replace(sealed, ciphertext=_flip(sealed.ciphertext, len(sealed.ciphertext) - 1)), b"ctx"),
        "nonce": (replace(sealed, nonce=_flip(sealed.nonce, 3)), b"ctx"),
        "aad": (sealed, b"other"),
        "other kid": (replace(sealed, key_id="k2"), b"ctx"),
        "unknown kid": (replace(sealed, key_id="nope"), b"ctx"),
        "truncated": (replace(sealed, ciphertext=sealed.ciphertext[:10]), b"ctx"),
    }
    messages = set()
    for what, (bad, aad) in attempts.items():
        with pytest.raises(InvalidArgument) as info:
            crypto.decrypt(bad, aad=aad)
        assert info.value.field == "ciphertext", what
        messages.add(str(info.value))
    assert messages == {"ciphertext could not be decrypted"}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.encrypt(b"x" * (64 * 1024 + 1)), "plaintext"),
        (lambda c: c.encrypt(b"x", aad=b"a" * (64 * 1024 + 1)), "aad"),
        (lambda c: c.decrypt(Sealed("k1", b"short", b"x" * 32)), "nonce"),
        (lambda c: c.decrypt(Sealed("k1", b"n" * 12, b"x" * (64 * 1024 + 17))), "ciphertext"),
        (lambda c: c.sign(b"m" * (64 * 1024 + 1)), "message"),
        (lambda c: c.verify(b"m", b"s" * 63), "signature"),
        (lambda c: c.verify(b"m", b"s" * 64, public_key=b"k" * 31), "public_key"),
    ],
)
def test_bad_sizes_name_the_field(call: Callable[[CryptoService], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        call(service())
    assert info.value.field == field


def test_largest_plaintext_is_accepted() -> None:
    crypto = service()
    assert crypto.decrypt(crypto.encrypt(b"x" * 64 * 1024)) == b"x" * 64 * 1024


def test_sign_and_verify_with_our_key_and_a_callers_key() -> None:
    crypto = service()
    signature = crypto.sign(b"hello")
    assert len(signature.signature) == 64 and signature.public_key == crypto.public_key
    assert crypto.verify(b"hello", signature.signature)
    assert crypto.verify(b"hello", signature.signature, public_key=signature.public_key)
    assert not crypto.verify(b"hello!", signature.signature)
    assert not crypto.verify(b"hello", _flip(signature.signature, 5))

    theirs = Ed25519PrivateKey.generate()
    their_public = theirs.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    their_signature = theirs.sign(b"from them")
    assert crypto.verify(b"from them", their_signature, public_key=their_public)
    assert not crypto.verify(b"from them", their_signature)  # not signed by us
    assert not crypto.verify(b"hello", signature.signature, public_key=their_public)
