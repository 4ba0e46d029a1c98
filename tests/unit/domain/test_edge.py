"""The edge policy both transports call: request context, admission, rate decisions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.domain import context
from app.domain.auth import Authenticator
from app.domain.edge import EdgePolicy
from app.domain.errors import PermissionDenied, RateLimited, Unauthenticated
from app.resilience.ratelimit import RateLimiter
from app.settings import Settings


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(rate_limit="2/minute")


def test_begin_binds_a_context_with_the_callers_request_id_or_a_new_one() -> None:
    token = EdgePolicy.begin("grpc", "abc-123")
    try:
        assert context.current() == context.RequestContext(request_id="abc-123", transport="grpc")
    finally:
        EdgePolicy.end(token)
    assert context.current() == context.RequestContext()
    token = EdgePolicy.begin("http", "not a valid id!")
    try:
        generated = context.current().request_id
        assert generated and generated != "not a valid id!"
    finally:
        EdgePolicy.end(token)


def test_admit_records_the_caller_and_charges_its_rate_limit(settings: Settings) -> None:
    auth = Authenticator(settings)
    policy = EdgePolicy(auth, RateLimiter(settings))
    header = "Bearer " + auth.mint("edge-alice", ["read"], ttl_s=60)
    with context.bind(context.RequestContext(request_id="r1")):
        admission = policy.admit(header, "read")
        assert context.current().user == "edge-alice"
        assert context.current().request_id == "r1"
        policy.admit(header, "read")
        with pytest.raises(RateLimited) as info:
            policy.admit(header, "read")
    assert admission.principal.subject == "edge-alice"
    assert admission.rate is not None and admission.rate.limit == 2 and admission.rate.remaining == 1
    assert info.value.rate is not None and not info.value.rate.allowed
    assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1


def test_admit_refuses_before_charging_anything(settings: Settings) -> None:
    auth = Authenticator(settings)
    policy = EdgePolicy(auth, RateLimiter(settings))
    header = "Bearer " + auth.mint("edge-bob", ["read"], ttl_s=60)
    with context.bind(context.RequestContext()):
        with pytest.raises(Unauthenticated):
            policy.admit(None, "read")
        with pytest.raises(PermissionDenied):
            policy.admit(header, "admin")
        # Neither refusal used bob's budget.
        admission = policy.admit(header, "read")
    assert admission.rate is not None and admission.rate.remaining == 1


def test_without_a_rate_limiter_admission_only_authenticates(settings: Settings) -> None:
    auth = Authenticator(settings)
    with context.bind(context.RequestContext()):
        admission = EdgePolicy(auth).admit("Bearer " + auth.mint("edge-carol", ["admin"], ttl_s=60), "admin")
    assert admission.rate is None


@pytest.mark.parametrize("candidate", ["abc\n", "a" * 129, "", "a b", "é", None])
def test_a_malformed_request_id_is_replaced(candidate: str | None) -> None:
    # Python's $ matches before a final newline: "abc\n" would pass ^...$ and end up in a header.
    assert context.accept_request_id(candidate) != candidate
    assert context.accept_request_id("abc-1.2:3_4") == "abc-1.2:3_4"
