"""A minimal client for examples and tests: a channel, the stub, and the metadata the server expects.

with connect("127.0.0.1:50051") as stub:
    item = stub.GetItem(pb.GetItemRequest(key="k"), metadata=call_metadata(token), timeout=2)

Every client of PlatformService should set `SERVICE_CONFIG` (or the same retry policy in its own
language): a call that reaches a worker in the instant its gRPC server begins to stop (a rolling reload, a
scale-down) is failed by grpc core with CANCELLED before any handler ran (grpc/grpc#41785; measured here,
about one call per reload under load). The server never processed such a call, so retrying it is safe
for every method. A client that did not cancel sees CANCELLED from this server for no other reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 5.0
# gRFC A6 retry policy. UNAVAILABLE is not in it: from this server it is an answer (a dependency is
# down), and a connection that cannot be made is what wait-for-ready is for.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": pb.DESCRIPTOR.services_by_name["PlatformService"].full_name}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["CANCELLED"],
                },
            }
        ]
    }
)
CHANNEL_OPTIONS = (("grpc.service_config", SERVICE_CONFIG),)


def channel(target: str) -> grpc.Channel:
    """An insecure channel to `target` with the client contract above."""
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


@contextmanager
def connect(target: str, *, ready_timeout_s: float | None = None) -> Iterator[pb_grpc.PlatformServiceStub]:
    """Yield a PlatformService stub over an insecure channel to `target`; the channel closes on exit.

    With `ready_timeout_s`, wait until the channel is connected first (grpc.FutureTimeoutError if not).
    """
    opened = channel(target)
    try:
        if ready_timeout_s is not None:
            grpc.channel_ready_future(opened).result(timeout=ready_timeout_s)
        yield pb_grpc.PlatformServiceStub(opened)
    finally:
        opened.close()


def call_metadata(token: str | None = None, *, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` and optionally `x-request-id`, as the server reads them."""
    md: list[tuple[str, str]] = []
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    if request_id is not None:
        md.append(("x-request-id", request_id))
    return tuple(md)


def get_quote(
    target: str, token: str, symbol: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Example call used by the README: fetch one quote and return it as plain data with the served-by
    headers (`x-request-id`, `x-instance-id`)."""
    with connect(target) as stub:
        quote, call = stub.GetQuote.with_call(
            pb.GetQuoteRequest(symbol=symbol), metadata=call_metadata(token), timeout=timeout_s
        )
        headers = dict(call.initial_metadata())
        return {
            "symbol": quote.symbol,
            "price": quote.price,
            "currency": quote.currency,
            "as_of": quote.as_of.ToDatetime().isoformat() + "Z",
            "stale": quote.stale,
            "request_id": headers.get("x-request-id"),
            "instance_id": headers.get("x-instance-id"),
        }
