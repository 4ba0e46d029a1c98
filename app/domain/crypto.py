"""AES-256-GCM encryption with key rotation, and Ed25519 signatures.

Encryption: a fresh random 96-bit nonce per message (never reused with a key: at our volumes the random
nonce collision bound of 2**-32 after 2**32 messages per key is far away, and keys rotate), optional
associated data bound into the tag. The first key of the keyring encrypts; every configured key id
decrypts, so rotating is "prepend the new key, re-encrypt at leisure, drop the old one".

Failures to decrypt (unknown key id, wrong AAD, tampered bytes) all raise the same InvalidArgument, so
an attacker learns nothing about which part was wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.domain.errors import InvalidArgument
from app.domain.models import Sealed, Signature
from app.settings import Settings

MAX_PLAINTEXT_BYTES = 64 * 1024
MAX_AAD_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
NONCE_BYTES = 12
TAG_BYTES = 16
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
_UNDECRYPTABLE = "ciphertext could not be decrypted"


class CryptoService:
    def __init__(self, keyring: Mapping[str, bytes], signing_key: Ed25519PrivateKey) -> None:
        if not keyring:
            raise ValueError("the keyring needs at least one key")
        # AESGCM objects are immutable and thread-safe; build them once, not per call.
        self._ciphers = {kid: AESGCM(key) for kid, key in keyring.items()}
        self._active_kid = next(iter(keyring))
        self._signing_key = signing_key
        self._public_key = signing_key.public_key()
        self._public_key_raw = self._public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def from_settings(cls, settings: Settings) -> CryptoService:
        return cls(settings.crypto_keyring, settings.crypto_signing_private_key)

    @property
    def public_key(self) -> bytes:
        return self._public_key_raw

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> Sealed:
        _max_len(plaintext, MAX_PLAINTEXT_BYTES, "plaintext")
        _max_len(aad, MAX_AAD_BYTES, "aad")
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[self._active_kid].encrypt(nonce, plaintext, aad or None)
        return Sealed(key_id=self._active_kid, nonce=nonce, ciphertext=ciphertext)

    def decrypt(self, sealed: Sealed, aad: bytes = b"") -> bytes:
        _max_len(aad, MAX_AAD_BYTES, "aad")
        _max_len(sealed.ciphertext, MAX_PLAINTEXT_BYTES + TAG_BYTES, "ciphertext")
        if len(sealed.nonce) != NONCE_BYTES:
            raise InvalidArgument(f"must be {NONCE_BYTES} bytes", field="nonce")
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None or len(sealed.ciphertext) < TAG_BYTES:
            raise InvalidArgument(_UNDECRYPTABLE, field="ciphertext")
        try:
            return cipher.decrypt(sealed.nonce, sealed.ciphertext, aad or None)
        except InvalidTag:
            raise InvalidArgument(_UNDECRYPTABLE, field="ciphertext") from None

    def sign(self, message: bytes) -> Signature:
        _max_len(message, MAX_MESSAGE_BYTES, "message")
        return Signature(signature=self._signing_key.sign(message), public_key=self._public_key_raw)

    def verify(self, message: bytes, signature: bytes, public_key: bytes | None = None) -> bool:
        """True if `signature` is `message` signed by `public_key` (default: our own key)."""
        _max_len(message, MAX_MESSAGE_BYTES, "message")
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidArgument(f"must be {SIGNATURE_BYTES} bytes", field="signature")
        key = self._public_key
        if public_key is not None and public_key != self._public_key_raw:
            if len(public_key) != PUBLIC_KEY_BYTES:
                raise InvalidArgument(f"must be {PUBLIC_KEY_BYTES} bytes", field="public_key")
            try:
                key = Ed25519PublicKey.from_public_bytes(public_key)
            except ValueError:
                raise InvalidArgument("not a valid Ed25519 public key", field="public_key") from None
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _max_len(data: bytes, limit: int, field: str) -> None:
    if len(data) > limit:
        raise InvalidArgument(f"must be at most {limit} bytes", field=field)
