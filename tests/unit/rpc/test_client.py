"""The client contract (app.rpc.client): grpc applies its retry policy, and it retries only what is safe."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from app.rpc import client
from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc


class Scripted(pb_grpc.PlatformServiceServicer):
    """Answers GetItem with the next scripted status code (OK once the script runs out)."""

    def __init__(self) -> None:
        self.script: list[grpc.StatusCode] = []
        self.calls = 0

    def GetItem(self, request: pb.GetItemRequest, context: grpc.ServicerContext) -> pb.Item:
        self.calls += 1
        if self.script:
            context.abort(self.script.pop(0), "scripted")
        return pb.Item(key=request.key)


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PlatformServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_a_call_cancelled_before_any_handler_ran_is_retried(scripted: tuple[Scripted, str]) -> None:
    # What grpc core answers for a call that raced the server's shutdown (grpc/grpc#41785).
    servicer, target = scripted
    servicer.script = [grpc.StatusCode.CANCELLED, grpc.StatusCode.CANCELLED]
    with client.connect(target, ready_timeout_s=5) as stub:
        assert stub.GetItem(pb.GetItemRequest(key="k"), timeout=5).key == "k"
    assert servicer.calls == 3


def test_retries_are_bounded(scripted: tuple[Scripted, str]) -> None:
    servicer, target = scripted
    servicer.script = [grpc.StatusCode.CANCELLED] * 5
    with client.connect(target, ready_timeout_s=5) as stub, pytest.raises(grpc.RpcError) as raised:
        stub.GetItem(pb.GetItemRequest(key="k"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    assert servicer.calls == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
def test_an_answer_of_the_service_is_not_retried(
    scripted: tuple[Scripted, str], code: grpc.StatusCode
) -> None:
    servicer, target = scripted
    servicer.script = [code]
    with client.connect(target, ready_timeout_s=5) as stub, pytest.raises(grpc.RpcError) as raised:
        stub.GetItem(pb.GetItemRequest(key="k"), timeout=5)
    assert raised.value.code() == code
    assert servicer.calls == 1
