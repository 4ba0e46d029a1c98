"""Secret scrubbing for log records: by attribute name and by the shape of a value.

Names: an attribute called authorization, token, password, plaintext, ciphertext, key, signature or secret
(or ending in _token, _key, _password, _secret, _signature) never keeps its value. Values: bearer/basic
credentials, JWTs (`eyJ...`), `Authorization: ...` and `password=...`-style pairs inside any string are
replaced. Nested dicts, lists and tuples are walked to a bounded depth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

SENSITIVE_NAMES = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "token",
        "password",
        "passwd",
        "plaintext",
        "ciphertext",
        "key",
        "signature",
        "secret",
        "cookie",
        "set_cookie",
    }
)
_SENSITIVE_SUFFIXES = ("_token", "_key", "_password", "_secret", "_signature", "_plaintext", "_ciphertext")
_MAX_DEPTH = 4

# Cheap pre-check: most strings contain none of these, and one search decides it.
_SUSPECT = re.compile(
    r"(?i)bearer|basic\s|eyJ|authorization|password|passwd|token|secret|plaintext|ciphertext|signature|api.?key"
)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Authorization: <scheme> <credentials>`, `"authorization": "..."`, `authorization=...`
    (
        re.compile(
            r"""(?i)(proxy-authorization|authorization)(["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;}&]+(?:\s+[^\s,;}&"']+)?)"""
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,2}"), REDACTED),
    (
        re.compile(
            r"""(?i)\b(password|passwd|token|access_token|refresh_token|secret|plaintext|ciphertext|signature"""
            r"""|api[_-]?key|private[_-]?key)(["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;}&]+)"""
        ),
        r"\1\2" + REDACTED,
    ),
)


def is_sensitive_name(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return lowered in SENSITIVE_NAMES or lowered.endswith(_SENSITIVE_SUFFIXES)


def redact_text(text: str) -> str:
    if not _SUSPECT.search(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secrets replaced; the same object when nothing needed replacing."""
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        changed = False
        result: dict[Any, Any] = {}
        for k, v in value.items():
            new = REDACTED if isinstance(k, str) and is_sensitive_name(k) else redact_value(v, depth + 1)
            changed = changed or new is not v
            result[k] = new
        return result if changed else value
    if isinstance(value, list | tuple):
        items = [redact_value(v, depth + 1) for v in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return tuple(items) if isinstance(value, tuple) else items
        return value
    return value
