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

# Cheap pre-check: every rule below needs one of these words, and most strings hold none. A literal
# alternation on a lower-cased copy is several times faster than a case-insensitive pattern.
_SUSPECT = re.compile("bearer|basic|eyj|authoriz|passw|token|secret|plaintext|ciphertext|signature|key")
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


_name_verdicts: dict[str, bool] = {}


def is_sensitive_name(name: str) -> bool:
    verdict = _name_verdicts.get(name)
    if verdict is None:
        lowered = name.lower().replace("-", "_")
        verdict = lowered in SENSITIVE_NAMES or lowered.endswith(_SENSITIVE_SUFFIXES)
        if len(_name_verdicts) < 4096:  # names are few; stay bounded if callers invent them
            _name_verdicts[name] = verdict
    return verdict


def may_hold_secret(text: str) -> bool:
    return _SUSPECT.search(text.lower()) is not None


def redact_text(text: str) -> str:
    if not may_hold_secret(text):
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
