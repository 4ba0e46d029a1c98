"""DomainError -> gRPC status: code, a message naming the field, and the standard rich error details.

The code of each error is this transport's decision (`CODES`); the HTTP adapter has its own table.

The message is for people (`key: must match ...`); machines get google.rpc.Status in the
`grpc-status-details-bin` trailer (ErrorInfo with the error type, BadRequest naming the field,
RetryInfo with the delay) plus a plain `retry-after` trailer in whole seconds, as over HTTP.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from app.domain import errors
from app.domain.errors import DomainError

ERROR_DOMAIN = "errors.platform.example"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after"
INTERNAL_DETAILS = "internal error"

Metadata = tuple[tuple[str, str | bytes], ...]

CODES: dict[type[DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Load shedding is the server refusing, as HTTP's 503: UNAVAILABLE, a server fault that the SLO counts;
    # RetryInfo says when to try again. RESOURCE_EXHAUSTED is the caller's quota or size.
    errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
    errors.DependencyUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(err: DomainError) -> grpc.StatusCode:
    """The status code of `err` (of its nearest mapped base class); INTERNAL for anything unmapped."""
    for cls in type(err).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def message_for(err: DomainError) -> str:
    return f"{err.field}: {err.detail}" if err.field else err.detail


def retry_after_seconds(err: DomainError) -> int | None:
    if err.retry_after_s is None:
        return None
    return max(1, math.ceil(err.retry_after_s))


def rich_status(err: DomainError, message: str) -> status_pb2.Status:
    details: list[AnyPb] = []
    info = error_details_pb2.ErrorInfo(reason=err.type_slug.upper().replace("-", "_"), domain=ERROR_DOMAIN)
    details.append(_pack(info))
    if err.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.detail)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    retry_after = retry_after_seconds(err)
    if retry_after is not None:
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=retry_after))))
    return status_pb2.Status(code=code_for(err).value[0], message=message, details=details)


def trailers_for(err: DomainError, message: str) -> Metadata:
    trailers: list[tuple[str, str | bytes]] = [
        (STATUS_DETAILS_KEY, rich_status(err, message).SerializeToString())
    ]
    retry_after = retry_after_seconds(err)
    if retry_after is not None:
        trailers.append((RETRY_AFTER_KEY, str(retry_after)))
    return tuple(trailers)


def _pack(
    msg: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> AnyPb:
    packed = AnyPb()
    packed.Pack(msg)
    return packed
