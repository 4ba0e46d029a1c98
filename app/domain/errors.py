"""Errors the operations raise: what went wrong, for whom, and whether to retry, free of any transport.

Each transport maps them in one table of its own (app.http.problems: RFC 9457 problem+json and an HTTP
status; app.rpc.status: a gRPC status code and rich details), so a client sees the same failure
whichever way it calls. Anything else that escapes an operation is a bug: it becomes a generic
500/INTERNAL with no detail, and the traceback goes to the logs and the span, never to the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.resilience.ratelimit import RateDecision


class DomainError(Exception):
    title: str = "Internal error"
    type_slug: str = "internal"

    def __init__(self, detail: str, *, field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.retry_after_s = retry_after_s

    @property
    def type_uri(self) -> str:
        return f"https://errors.platform.example/{self.type_slug}"


class InvalidArgument(DomainError):
    title, type_slug = "Invalid request", "invalid-argument"


class Unauthenticated(DomainError):
    title, type_slug = "Unauthenticated", "unauthenticated"


class PermissionDenied(DomainError):
    title, type_slug = "Forbidden", "forbidden"


class NotFound(DomainError):
    title, type_slug = "Not found", "not-found"


class Conflict(DomainError):
    title, type_slug = "Conflict", "conflict"


class PayloadTooLarge(DomainError):
    title, type_slug = "Payload too large", "payload-too-large"


class RateLimited(DomainError):
    title, type_slug = "Too many requests", "rate-limited"

    def __init__(
        self, detail: str, *, retry_after_s: float | None = None, rate: RateDecision | None = None
    ) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.rate = rate  # the decision behind it, for the transport's rate-limit headers


class Overloaded(DomainError):
    """The worker pool's queue is full: shed load fast instead of queueing without bound."""

    title, type_slug = "Overloaded", "overloaded"


class DependencyUnavailable(DomainError):
    """A dependency failed or its circuit is open and no fallback value exists."""

    title, type_slug = "Dependency unavailable", "dependency-unavailable"


class DeadlineExceeded(DomainError):
    title, type_slug = "Timed out", "timeout"
