"""Flask's side of the edge policy (app.domain.edge): bind the request, admit the caller, set headers."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import Flask, Response, current_app, g, request

from app.domain import context
from app.domain.edge import EdgePolicy
from app.domain.errors import RateLimited

P = ParamSpec("P")
R = TypeVar("R")


EXTENSION = "platform.edge"


def init_app(app: Flask, policy: EdgePolicy, instance_id: str) -> None:
    """Every request of `app` is bound and answered with these headers; `requires` admits through `policy`."""
    app.extensions[EXTENSION] = policy

    @app.before_request
    def _bind_context() -> None:
        g.ctx_token = EdgePolicy.begin("http", request.headers.get("X-Request-ID"))

    @app.after_request
    def _headers(resp: Response) -> Response:
        ctx = context.current()
        if ctx.request_id:
            resp.headers["X-Request-ID"] = ctx.request_id
        resp.headers["X-Instance-Id"] = instance_id
        decision = g.get("rate")
        if decision is not None:
            # IETF draft RateLimit header fields, as most gateways emit them.
            resp.headers["RateLimit-Limit"] = str(decision.limit)
            resp.headers["RateLimit-Remaining"] = str(decision.remaining)
            resp.headers["RateLimit-Reset"] = str(max(0, math.ceil(decision.reset_after_s)))
        return resp

    @app.teardown_request
    def _unbind_context(_exc: BaseException | None) -> None:
        token = g.pop("ctx_token", None)
        if token is not None:
            EdgePolicy.end(token)


def requires(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Admit the caller through the edge policy with `scope` before the view runs."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            policy: EdgePolicy = current_app.extensions[EXTENSION]
            try:
                admission = policy.admit(request.headers.get("Authorization"), scope)
            except RateLimited as err:
                g.rate = err.rate
                raise
            g.principal, g.rate = admission.principal, admission.rate
            return view(*args, **kwargs)

        return guarded

    return decorate
