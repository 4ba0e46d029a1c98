"""Everything one gunicorn worker runs beside its HTTP threads, started and stopped in one place.

Started by the `post_worker_init` hook (after fork, after telemetry and the app exist), begun to stop on
SIGTERM (readiness goes 503, the gRPC server stops taking calls and lets in-flight ones finish), and
finished in `worker_exit` within gunicorn's graceful timeout.
"""

from __future__ import annotations

import logging
import threading
import time

from app.domain.services import Services
from app.rpc.server import GrpcServer
from app.runtime import handover
from app.runtime.chaos_injector import ChaosInjector
from app.runtime.probes import LoopLagProbe, WakeupDelaySampler
from app.settings import Settings

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings, services: Services, instance_id: str) -> None:
        self.settings = settings
        self.services = services
        self.instance_id = instance_id
        self.grpc: GrpcServer | None = None
        self._lag: LoopLagProbe | None = None
        self._wakeup: WakeupDelaySampler | None = None
        self._chaos: ChaosInjector | None = None
        self._grpc_stopper: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.services.start()
        self.grpc = GrpcServer(self.services, self.settings, self.instance_id)
        self.grpc.start()
        grpc_server = self.grpc
        self.services.add_readiness_check("grpc not serving", lambda: grpc_server.serving)
        self._lag = LoopLagProbe(grpc_server.loop)
        self._lag.start()
        self._wakeup = WakeupDelaySampler()
        self._wakeup.start()
        self._chaos = ChaosInjector(self.services.chaos.get, grpc_server.loop)
        self._chaos.start()
        log.info("worker ready", extra={"grpc_port": grpc_server.port})

    def begin_shutdown(self) -> None:
        """SIGTERM: stop advertising readiness and start the gRPC drain at once, in parallel with HTTP's."""
        with self._lock:
            if self._grpc_stopper is not None:
                return
            self.services.begin_shutdown()
            grace = self.settings.graceful_timeout_s
            if self.grpc is not None:
                self._grpc_stopper = threading.Thread(
                    target=self._stop_grpc, args=(self.grpc, grace), name="grpc-stop", daemon=True
                )
                self._grpc_stopper.start()

    def _stop_grpc(self, server: GrpcServer, grace: float) -> None:
        # Hand the gRPC port over before closing it (see app.runtime.handover); half the grace at most.
        handover.wait_for_successor(server.port, self.settings.web_concurrency, timeout_s=grace / 2)
        server.stop(grace / 2)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish shutting down; bounded by `timeout_s` (default: the graceful timeout)."""
        deadline = time.monotonic() + (timeout_s or self.settings.graceful_timeout_s)
        self.begin_shutdown()
        if self._grpc_stopper is not None:
            self._grpc_stopper.join(max(0.0, deadline - time.monotonic()))
        for part in (self._chaos, self._wakeup):
            if part is not None:
                part.stop()
        if self._lag is not None:
            self._lag.stop()
        self.services.close()
