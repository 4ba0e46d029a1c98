"""RFC 9457 problem+json responses for every error the HTTP API returns.

The status of each domain error is this transport's decision (`STATUS`); the gRPC adapter has its own
table.

Client mistakes get a 4xx that names the field; anything unexpected becomes a bare 500 whose detail
says nothing about internals (the traceback goes to the log and the span, never to the client).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from app.domain import errors
from app.domain.context import current
from app.domain.errors import DomainError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"

STATUS: dict[type[DomainError], int] = {
    errors.InvalidArgument: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.RateLimited: 429,
    errors.Overloaded: 503,
    errors.DependencyUnavailable: 503,
    errors.DeadlineExceeded: 504,
}


def status_for(err: DomainError) -> int:
    """The HTTP status of `err` (of its nearest mapped base class); 500 for anything unmapped."""
    for cls in type(err).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_uri: str = "about:blank",
    field: str | None = None,
    retry_after_s: float | None = None,
) -> Response:
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if field:
        body["field"] = field
    ctx = current()
    if ctx.request_id:
        body["request_id"] = ctx.request_id
    resp = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if retry_after_s is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return resp


def from_domain(err: DomainError) -> Response:
    return problem(
        status_for(err),
        err.title,
        err.detail,
        type_uri=err.type_uri,
        field=err.field,
        retry_after_s=err.retry_after_s,
    )


def init_app(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(err: DomainError) -> Response:
        return from_domain(err)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        # Routing and protocol errors from Werkzeug: 404, 405, 413 (body over MAX_CONTENT_LENGTH), ...
        status = err.code or 500
        detail = err.description or err.name
        if status == 405:
            detail = f"{request.method} is not allowed here"
        resp = problem(status, err.name, detail)
        if status == 405 and err.get_headers():
            for key, value in err.get_headers():
                if key.lower() == "allow":
                    resp.headers["Allow"] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal error", "internal error")
