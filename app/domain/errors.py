"""Errors the operations raise, each knowing its HTTP status and gRPC code.

Both transports map these the same way (RFC 9457 problem+json over HTTP, a status code and message over
gRPC), so a client sees the same failure whichever way it calls. Anything else that escapes an operation
is a bug: it becomes a generic 500/INTERNAL with no detail, and the traceback goes to the logs and the
span, never to the client.
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    status: int = 500
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
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
    status, code, title, type_slug = (
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "Invalid request",
        "invalid-argument",
    )


class Unauthenticated(DomainError):
    status, code, title, type_slug = (
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        "Unauthenticated",
        "unauthenticated",
    )


class PermissionDenied(DomainError):
    status, code, title, type_slug = 403, grpc.StatusCode.PERMISSION_DENIED, "Forbidden", "forbidden"


class NotFound(DomainError):
    status, code, title, type_slug = 404, grpc.StatusCode.NOT_FOUND, "Not found", "not-found"


class Conflict(DomainError):
    status, code, title, type_slug = 409, grpc.StatusCode.ABORTED, "Conflict", "conflict"


class PayloadTooLarge(DomainError):
    status, code, title, type_slug = (
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Payload too large",
        "payload-too-large",
    )


class RateLimited(DomainError):
    status, code, title, type_slug = (
        429,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Too many requests",
        "rate-limited",
    )


class Overloaded(DomainError):
    """The worker pool's queue is full: shed load fast instead of queueing without bound."""

    status, code, title, type_slug = 503, grpc.StatusCode.RESOURCE_EXHAUSTED, "Overloaded", "overloaded"


class DependencyUnavailable(DomainError):
    """A dependency failed or its circuit is open and no fallback value exists."""

    status, code, title, type_slug = (
        503,
        grpc.StatusCode.UNAVAILABLE,
        "Dependency unavailable",
        "dependency-unavailable",
    )


class DeadlineExceeded(DomainError):
    status, code, title, type_slug = 504, grpc.StatusCode.DEADLINE_EXCEEDED, "Timed out", "timeout"
