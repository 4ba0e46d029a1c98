"""gRPC unit tests: the server instrumented as in a worker, where the distro loads the platform gRPC server
instrumentation (a patch of grpc.aio.server, with health and reflection excluded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.telemetry.environment import GRPC_EXCLUDED_SERVICES
from app.telemetry.grpc_instrumentation import PlatformGrpcAioServerInstrumentor


@pytest.fixture(scope="package", autouse=True)
def grpc_server_instrumented() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", GRPC_EXCLUDED_SERVICES)
        instrumentor = PlatformGrpcAioServerInstrumentor()
        instrumentor.instrument()
    yield
    instrumentor.uninstrument()
