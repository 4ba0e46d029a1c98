"""Per-request context in contextvars: request id and caller, readable from logs, spans and pool tasks.

Both transports set it at the edge (`bind`), everything below reads it (`current`). It is copied into
worker-pool tasks explicitly, because a process boundary carries no contextvars.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace

# fullmatch, never match with ^...$: Python's $ also matches before a trailing newline.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str = ""
    user: str = ""
    transport: str = ""  # "http" | "grpc" | "" outside a request

    def as_dict(self) -> dict[str, str]:
        return {"request_id": self.request_id, "user": self.user, "transport": self.transport}


_EMPTY = RequestContext()
_current: ContextVar[RequestContext] = ContextVar("request_context", default=_EMPTY)


def current() -> RequestContext:
    return _current.get()


def accept_request_id(candidate: str | None) -> str:
    """Keep a caller's request id if it is well formed, otherwise make one (never trust it into logs raw)."""
    if candidate and REQUEST_ID_RE.fullmatch(candidate):
        return candidate
    # 128 random bits, as uuid4's, from the PRNG: a request id must be unique, not unpredictable, and
    # uuid4's os.urandom is a system call per request that hands the GIL to another thread. random's
    # shared generator is seeded from os.urandom and re-seeded in every forked process.
    return f"{random.getrandbits(128):032x}"


@contextmanager
def bind(ctx: RequestContext) -> Iterator[RequestContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def enter(ctx: RequestContext) -> Token[RequestContext]:
    """For frameworks whose request start and end are separate hooks (Flask before/teardown)."""
    return _current.set(ctx)


def leave(token: Token[RequestContext]) -> None:
    _current.reset(token)


def log_fields() -> dict[str, str]:
    """The current request's fields for log records (none outside a request)."""
    ctx = _current.get()
    if ctx is _EMPTY:
        return {}
    return {"request_id": ctx.request_id, "user": ctx.user}


def set_user(user: str) -> None:
    """Called by auth once the caller is known; the rest of the request sees it."""
    _current.set(replace(_current.get(), user=user))
