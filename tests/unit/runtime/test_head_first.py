"""The worker's answers to requests gunicorn's parser refuses: problem+json, never the client's bytes."""

from __future__ import annotations

import json

import pytest
from gunicorn.http import errors as http_errors

from app.runtime.head_first import classify, problem_response


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (http_errors.InvalidRequestLine("GET /?token=SECRET HTTP/1.1\x01"), 400),
        (http_errors.InvalidHeader("AUTHORIZATION"), 400),
        (http_errors.LimitRequestLine(9000, 4094), 414),
        (http_errors.LimitRequestHeaders("limit request headers fields"), 431),
        (http_errors.UnsupportedTransferCoding("gzip"), 400),  # gunicorn says 501: the client's doing
        (http_errors.ExpectationFailed("junk"), 417),
    ],
)
def test_parse_errors_are_client_errors_in_problem_json(exc: Exception, status: int) -> None:
    known = classify(exc)
    assert known is not None and known[0] == status
    raw = problem_response(*known)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Content-Type: application/problem+json" in head
    assert f"Content-Length: {len(body)}".encode() in head
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert "SECRET" not in raw.decode()


def test_the_applications_own_header_mistakes_stay_server_faults() -> None:
    assert classify(http_errors.InvalidResponseHeader("X-Bad", "v\r\n")) is None
    assert classify(RuntimeError("boom")) is None
