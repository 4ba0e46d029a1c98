"""Steady load on both transports for the fault tests: every request on a new connection (as new clients
and load balancers send them), every outcome recorded with its start and end time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from app.rpc.platform.v1 import platform_pb2 as pb
from tests.e2e.conftest import Proc


@dataclass(frozen=True)
class Outcome:
    transport: str  # "http" | "grpc"
    started: float  # time.monotonic()
    ended: float
    ok: bool
    detail: str  # status code, gRPC code, or the exception

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """HTTP `GET /v1/items/<key>` and gRPC `GetItem` in `threads` threads each, until `stop()`."""

    api: Proc
    token: str
    key: str
    threads: int = 3
    ok_http: frozenset[int] = frozenset({200})
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for transport, call in (("http", self._http), ("grpc", self._grpc)):
            for _ in range(self.threads):
                thread = threading.Thread(target=self._loop, args=(transport, call), daemon=True)
                thread.start()
                self._workers.append(thread)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)
        with self._lock:
            return list(self.outcomes)

    def _loop(self, transport: str, call: Callable[[], tuple[bool, str]]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok, detail = call()
            except Exception as exc:  # a refused or reset connection is an outcome, not a test error
                ok, detail = False, repr(exc)[:200]
            with self._lock:
                self.outcomes.append(Outcome(transport, started, time.monotonic(), ok, detail))

    def _http(self) -> tuple[bool, str]:
        response = self.api.request("GET", f"/v1/items/{self.key}", token=self.token, timeout=15)
        return response.status in self.ok_http, str(response.status)

    def _grpc(self) -> tuple[bool, str]:
        try:
            # As gRPC clients should across restarts: a connect refused while a listener changes hands
            # is retried by the channel (wait-for-ready); the call itself must not fail.
            self.api.rpc(
                "GetItem", pb.GetItemRequest(key=self.key), self.token, timeout=15, wait_for_ready=True
            )
        except grpc.RpcError as err:
            return False, str(err.code())
        return True, "OK"


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """What docs/reliability.md reports per fault: requests sent and failed, per transport."""
    return {
        transport: {
            "sent": sum(o.transport == transport for o in outcomes),
            "failed": sum(o.transport == transport and not o.ok for o in outcomes),
        }
        for transport in ("http", "grpc")
    }
