"""Bearer-token auth, scopes per method, and the per-principal rate limit, over a real socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.domain.auth import ADMIN, Authenticator
from app.rpc.client import call_metadata
from app.rpc.interceptors import METHOD_SCOPES, READ_SCOPE, WRITE_SCOPE
from app.rpc.platform.v1 import platform_pb2 as pb
from app.settings import load_settings
from tests.unit.conftest import settings_env
from tests.unit.rpc.support import RpcStack, call_error, detail_of, rich_status, rpc_stack, trailers

# Empty requests: auth must answer before any argument is looked at.
EMPTY_REQUESTS: dict[str, Any] = {
    "GetItem": pb.GetItemRequest(),
    "PutItem": pb.PutItemRequest(),
    "DeleteItem": pb.DeleteItemRequest(),
    "Encrypt": pb.EncryptRequest(),
    "Decrypt": pb.DecryptRequest(),
    "Sign": pb.SignRequest(),
    "Verify": pb.VerifyRequest(),
    "Hash": pb.HashRequest(),
    "CountPrimes": pb.CountPrimesRequest(),
    "GetQuote": pb.GetQuoteRequest(),
    "WatchQuotes": pb.WatchQuotesRequest(),
    "SubmitJob": pb.SubmitJobRequest(),
    "GetJob": pb.GetJobRequest(),
    "ReplayDeadJobs": pb.ReplayDeadJobsRequest(),
}


@pytest.fixture(scope="module")
def stack(redis_server: str) -> Iterator[RpcStack]:
    with rpc_stack(redis_server, start_pool=False) as s:
        yield s


def call(stack: RpcStack, method: str, request: Any, metadata: Any) -> Any:
    rpc = getattr(stack.stub, method)
    if method == "WatchQuotes":
        return list(rpc(request, metadata=metadata, timeout=5))
    return rpc(request, metadata=metadata, timeout=5)


def get_item_error(stack: RpcStack, metadata: Any) -> grpc.RpcError:
    return call_error(lambda: stack.stub.GetItem(pb.GetItemRequest(key="k"), metadata=metadata, timeout=5))


def test_scope_table_covers_every_rpc_of_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["PlatformService"]
    assert set(METHOD_SCOPES) == {m.name for m in service.methods} == set(EMPTY_REQUESTS)
    assert {m for m, s in METHOD_SCOPES.items() if s == READ_SCOPE} == {
        "GetItem",
        "GetQuote",
        "WatchQuotes",
        "GetJob",
    }
    assert {m for m, s in METHOD_SCOPES.items() if s == ADMIN} == {"ReplayDeadJobs"}


@pytest.mark.parametrize("method", sorted(METHOD_SCOPES))
def test_missing_token_is_unauthenticated_for_every_rpc(stack: RpcStack, method: str) -> None:
    err = call_error(lambda: call(stack, method, EMPTY_REQUESTS[method], ()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in err.details()


@pytest.mark.parametrize("method", sorted(METHOD_SCOPES))
def test_token_without_the_methods_scope_is_permission_denied(stack: RpcStack, method: str) -> None:
    needed = METHOD_SCOPES[method]
    other = WRITE_SCOPE if needed == READ_SCOPE else READ_SCOPE
    err = call_error(lambda: call(stack, method, EMPTY_REQUESTS[method], stack.md(other)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert repr(needed) in err.details()


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer a b", "token-without-scheme"],
)
def test_malformed_authorization_is_unauthenticated(stack: RpcStack, authorization: str) -> None:
    err = get_item_error(stack, (("authorization", authorization),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not.a.jwt" not in err.details()  # never echo the credential


def test_expired_token_is_unauthenticated(stack: RpcStack) -> None:
    past = Authenticator(stack.settings, clock=lambda: time.time() - 3600)
    token = past.mint("old-caller", ["read"], 60)
    err = get_item_error(stack, call_metadata(token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_signed_with_another_key_is_unauthenticated(stack: RpcStack) -> None:
    foreign = Authenticator(load_settings(settings_env()))
    err = get_item_error(stack, call_metadata(foreign.mint("intruder", ["read", "write"], 60)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_failures_still_carry_the_request_id_and_instance(stack: RpcStack) -> None:
    err = get_item_error(stack, (("x-request-id", "auth-fail-1"),))
    headers = dict(err.initial_metadata())
    assert headers["x-request-id"] == "auth-fail-1" and headers["x-instance-id"]
    info = detail_of(err, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "UNAUTHENTICATED"


def test_health_and_reflection_need_no_token(stack: RpcStack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="platform.v1.PlatformService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_rate_limit_per_principal_with_retry_after(redis_server: str) -> None:
    with rpc_stack(redis_server, start_pool=False, rate_limit="2/minute") as s:
        md = s.md("read", subject="greedy")
        for _ in range(2):
            s.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=md, timeout=5)
        err = call_error(lambda: s.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=md, timeout=5))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in err.details()
        retry_after = trailers(err)["retry-after"]
        assert isinstance(retry_after, str) and 1 <= int(retry_after) <= 60
        retry = detail_of(err, error_details_pb2.RetryInfo)
        assert retry is not None and retry.retry_delay.seconds == int(retry_after)
        assert rich_status(err).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        # Another principal has its own budget.
        s.stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=s.md("read", subject="modest"), timeout=5)


def test_two_authorization_entries_are_refused_as_over_http(stack: RpcStack) -> None:
    """Repeated, neither wins: as an HTTP server joins repeated fields, no bearer scheme parses them."""
    good = stack.md("read")[0]
    for metadata in ((good, ("authorization", "Bearer forged")), (("authorization", "Bearer forged"), good)):
        err = get_item_error(stack, metadata)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
