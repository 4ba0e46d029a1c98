"""The edge policy every inbound call passes before an operation, written once for every transport.

credentials -> principal -> scope check -> rate decision -> request context:

- `begin(transport, request_id)` binds the request context (a caller's request id if well formed, else a
  new one); logs, spans and pool tasks of the call read it from there;
- `admit(authorization, scope)` authenticates the bearer token, checks the scope, records the caller in
  the request context and charges its rate limit; it raises Unauthenticated, PermissionDenied or
  RateLimited (carrying the decision, for the transport's rate-limit headers).

The Flask edge (app.http.edge), the gRPC interceptor (app.rpc.interceptors) and the upstream service
(app.upstream) call exactly these, so a caller gets the same answer whichever way it comes in.
"""

from __future__ import annotations

from contextvars import Token
from dataclasses import dataclass
from typing import Protocol

from app.domain import context
from app.domain.errors import RateLimited
from app.domain.models import Principal
from app.resilience.ratelimit import RateDecision


class Authenticates(Protocol):
    def authenticate(self, authorization_header: str | None) -> Principal: ...
    def authorize(self, principal: Principal, scope: str) -> None: ...


class LimitsRate(Protocol):
    def check(self, client_id: str) -> RateDecision: ...


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    rate: RateDecision | None  # None where no rate limit applies


class EdgePolicy:
    def __init__(self, auth: Authenticates, ratelimiter: LimitsRate | None = None) -> None:
        self._auth = auth
        self._ratelimiter = ratelimiter

    @staticmethod
    def begin(transport: str, request_id: str | None) -> Token[context.RequestContext]:
        """Bind a new request context; pass the token to `end` (or let the task's context end with it)."""
        rid = context.accept_request_id(request_id)
        return context.enter(context.RequestContext(request_id=rid, transport=transport))

    @staticmethod
    def end(token: Token[context.RequestContext]) -> None:
        context.leave(token)

    def admit(self, authorization: str | None, scope: str) -> Admission:
        principal = self._auth.authenticate(authorization)
        self._auth.authorize(principal, scope)
        context.set_user(principal.subject)
        if self._ratelimiter is None:
            return Admission(principal, None)
        decision = self._ratelimiter.check(principal.subject)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {decision.limit} requests exceeded; retry later",
                retry_after_s=max(decision.reset_after_s, 1.0),
                rate=decision,
            )
        return Admission(principal, decision)
