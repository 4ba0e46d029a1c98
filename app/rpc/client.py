"""A minimal client for examples and tests: a channel, the stub, and the metadata the server expects.

with connect("127.0.0.1:50051") as stub:
    item = stub.GetItem(pb.GetItemRequest(key="k"), metadata=call_metadata(token), timeout=2)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 5.0


@contextmanager
def connect(target: str, *, ready_timeout_s: float | None = None) -> Iterator[pb_grpc.PlatformServiceStub]:
    """Yield a PlatformService stub over an insecure channel to `target`; the channel closes on exit.

    With `ready_timeout_s`, wait until the channel is connected first (grpc.FutureTimeoutError if not).
    """
    channel = grpc.insecure_channel(target)
    try:
        if ready_timeout_s is not None:
            grpc.channel_ready_future(channel).result(timeout=ready_timeout_s)
        yield pb_grpc.PlatformServiceStub(channel)
    finally:
        channel.close()


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
