"""The gRPC status table against HTTP's: a client sees the same failure whichever way it calls."""

from __future__ import annotations

import grpc
import pytest

from app.domain import errors
from app.domain.errors import DomainError
from app.http.problems import status_for
from app.rpc.interceptors import SERVER_FAULTS
from app.rpc.status import code_for

EVERY_ERROR: list[type[DomainError]] = [DomainError, *DomainError.__subclasses__()]


def test_every_domain_error_is_in_both_tables() -> None:
    assert len(EVERY_ERROR) > 8
    unmapped = [cls.__name__ for cls in EVERY_ERROR[1:] if code_for(cls("x")) is grpc.StatusCode.INTERNAL]
    assert unmapped == []


@pytest.mark.parametrize("error", EVERY_ERROR, ids=lambda cls: cls.__name__)
def test_the_servers_fault_on_one_transport_is_on_the_other(error: type[DomainError]) -> None:
    # What the SLO counts as an error (docs/slo.md): HTTP 5xx, and the gRPC codes the interceptor
    # treats as server faults. Load shedding and a dependency down count on both; a quota on neither.
    assert (status_for(error("x")) >= 500) == (code_for(error("x")) in SERVER_FAULTS)


def test_load_shedding_is_unavailable_and_says_when_to_retry() -> None:
    shed = errors.Overloaded("worker pool is full", retry_after_s=1)
    assert (status_for(shed), code_for(shed)) == (503, grpc.StatusCode.UNAVAILABLE)
