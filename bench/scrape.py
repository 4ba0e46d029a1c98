"""Reading the service's own counts from its `/metrics` (Prometheus text, all workers summed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

HTTP_DURATION = "http_server_request_duration_seconds"
RPC_DURATION = "rpc_server_call_duration_seconds"
LabelTest = Callable[[dict[str, str]], bool]


def total(text: str, sample: str, labels: LabelTest = lambda _labels: True) -> float:
    """The sum of the samples called `sample` whose labels pass `labels`."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels(s.labels)
    )


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def _http_ok(labels: dict[str, str]) -> bool:
    return labels.get("http_response_status_code", "").startswith("2")


def _grpc_ok(labels: dict[str, str]) -> bool:
    return labels.get("rpc_grpc_status_code") == "0"


@dataclass(frozen=True)
class ServedCounts:
    """Requests the service counted as served well, and otherwise, per transport; `counted` names the
    transports whose duration metric is on /metrics at all."""

    http_ok: float
    http_not_ok: float
    grpc_ok: float
    grpc_not_ok: float
    counted: frozenset[str] = frozenset()

    @classmethod
    def from_metrics(cls, text: str) -> ServedCounts:
        http, grpc = f"{HTTP_DURATION}_count", f"{RPC_DURATION}_count"
        present = families(text)
        return cls(
            http_ok=total(text, http, _http_ok),
            http_not_ok=total(text, http, lambda labels: not _http_ok(labels)),
            grpc_ok=total(text, grpc, _grpc_ok),
            grpc_not_ok=total(text, grpc, lambda labels: not _grpc_ok(labels)),
            counted=frozenset(
                t for t, family in (("http", HTTP_DURATION), ("grpc", RPC_DURATION)) if family in present
            ),
        )

    def ok(self, transport: str) -> float:
        return self.http_ok if transport == "http" else self.grpc_ok

    def not_ok(self, transport: str) -> float:
        return self.http_not_ok if transport == "http" else self.grpc_not_ok
