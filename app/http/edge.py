"""What every request passes through at the edge: request id, auth, rate limit, response headers."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import Flask, Response, current_app, g, request

from app.domain.errors import RateLimited
from app.domain.models import Principal
from app.runtime import context

P = ParamSpec("P")
R = TypeVar("R")


def init_app(app: Flask, instance_id: str) -> None:
    @app.before_request
    def _bind_context() -> None:
        rid = context.accept_request_id(request.headers.get("X-Request-ID"))
        g.ctx_token = context.enter(context.RequestContext(request_id=rid, transport="http"))

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
            context.leave(token)


def requires(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Authenticate the bearer token, check `scope`, then charge the caller's rate limit."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            services = current_app.extensions["platform"]
            principal: Principal = services.auth.authenticate(request.headers.get("Authorization"))
            services.auth.authorize(principal, scope)
            g.principal = principal
            decision = services.ratelimiter.check(principal.subject)
            g.rate = decision
            if not decision.allowed:
                raise RateLimited(
                    f"rate limit of {decision.limit} requests exceeded; retry later",
                    retry_after_s=max(decision.reset_after_s, 1.0),
                )
            return view(*args, **kwargs)

        return guarded

    return decorate
