"""The gRPC server's lifecycle in one worker: its own event loop on a daemon thread, started after fork.

`start()` returns once the port is bound and health says SERVING; `stop(grace_s)` flips health to
NOT_SERVING, lets in-flight calls finish within the grace period, then ends the loop and the thread.
Every worker binds the same port with SO_REUSEPORT, so the kernel spreads connections across workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app.rpc.interceptors import SERVICE_NAME, PlatformInterceptor
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc
from app.rpc.ports import RpcServices
from app.rpc.servicer import PlatformServicer
from app.settings import Settings

log = logging.getLogger(__name__)

# Upper bound on calls in flight per worker (streams included); beyond it grpc answers
# RESOURCE_EXHAUSTED at once, which also bounds the handler executor's queue.
MAX_CONCURRENT_RPCS = 1024
# Long-lived client channels would stick to one worker forever; recycling connections lets the
# kernel's SO_REUSEPORT balancing catch up. The grace lets in-flight calls on an old connection finish.
MAX_CONNECTION_AGE_MS = 300_000
MAX_CONNECTION_AGE_GRACE_MS = 30_000
START_TIMEOUT_S = 10.0
# All of a call's metadata together, at most. grpc's default is a soft limit of 8 KiB and a hard one of
# 16 KiB, and between the two it refuses a random share of calls; one limit makes the answer
# deterministic: RESOURCE_EXHAUSTED past it. A bearer token may be 8 KiB (app.domain.auth), so 16 KiB
# leaves room for the rest.
MAX_METADATA_BYTES = 16 * 1024


class GrpcBindError(RuntimeError):
    """The gRPC port could not be bound: an operator's configuration, reported without a traceback."""


class GrpcServer:
    def __init__(
        self,
        services: RpcServices,
        settings: Settings,
        instance_id: str,
        *,
        port: int | None = None,
        host: str | None = None,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    ) -> None:
        self._services = services
        self._settings = settings
        self._instance_id = instance_id
        self._host = settings.bind_host if host is None else host
        self._requested_port = settings.grpc_port if port is None else port
        self._max_concurrent_rpcs = max_concurrent_rpcs
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self._serving = False
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); 0 before start()."""
        return self._port

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("GrpcServer.loop is only available after start()")
        return self._loop

    @property
    def serving(self) -> bool:
        return self._serving and self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("GrpcServer.start() called twice")
            self._started = True
        ready = threading.Event()
        errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready, errors), name="grpc-loop", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop(0)
            raise RuntimeError(f"gRPC server did not start within {timeout_s}s")
        if errors:
            self._thread.join(timeout_s)
            raise errors[0]
        log.info("gRPC server serving", extra={"grpc_port": self._port})

    def stop(self, grace_s: float) -> None:
        """Drain and stop; idempotent, callable from any thread, returns within grace_s + 1 s.

        From the loop's own thread it cannot wait for itself: it schedules the shutdown and returns.
        """
        deadline = time.monotonic() + grace_s + 1.0
        with self._lock:
            first = not self._stopping
            self._stopping = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_closed():  # never started serving, or already stopped
            thread.join(max(0.0, deadline - time.monotonic()))
            return
        if threading.current_thread() is thread:
            if first:
                task = loop.create_task(self._shutdown(grace_s))
                task.add_done_callback(lambda _: loop.stop())
            return
        if first:
            try:
                future = asyncio.run_coroutine_threadsafe(self._shutdown(grace_s), loop)
                future.result(timeout=max(0.0, deadline - time.monotonic() - 0.5))
            except TimeoutError:
                log.warning("gRPC server did not drain within %.1fs; stopping its loop", grace_s)
            except Exception:
                log.exception("error while stopping the gRPC server")
            with contextlib.suppress(RuntimeError):  # the loop closed by itself meanwhile
                loop.call_soon_threadsafe(loop.stop)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("gRPC loop thread still running after stop(%.1f)", grace_s)

    # --- on the loop thread ----------------------------------------------------------------------------

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # handed to start(), which raises it in the caller
                errors.append(exc)
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            self._serving = False
            self._close_loop(loop)

    async def _serve(self) -> None:
        settings = self._settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.grpc_handler_threads, thread_name_prefix="grpc-handler"
        )
        self._health = health.aio.HealthServicer()
        # The gRPC server instrumentation (app.telemetry.grpc_instrumentation, loaded by the distro) puts
        # its interceptor first, so its span wraps admission, errors and metrics; health and reflection
        # are not traced (OTEL_PYTHON_GRPC_EXCLUDED_SERVICES, as /healthz over HTTP).
        server = grpc.aio.server(
            interceptors=[PlatformInterceptor(self._services, self._executor, self._instance_id)],
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
            ],
            maximum_concurrent_rpcs=self._max_concurrent_rpcs,
        )
        servicer = PlatformServicer(self._services, self._executor)
        pb_grpc.add_PlatformServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = _address(self._host, self._requested_port)
        try:
            port = server.add_insecure_port(address)  # raises (or returns 0 on older grpcio) when it fails
        except RuntimeError:
            port = 0
        if not port:
            raise GrpcBindError(
                f"cannot listen for gRPC on {address}: the port is in use by another process or the address "
                "is not local (check GRPC_PORT and BIND_HOST)"
            )
        await server.start()
        self._server = server
        self._port = port
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True

    async def _shutdown(self, grace_s: float) -> None:
        self._serving = False
        try:
            if self._health is not None:
                await self._health.enter_graceful_shutdown()  # NOT_SERVING, and no later set() undoes it
            if self._server is not None:
                await self._server.stop(grace_s)  # refuse new calls, let in-flight ones finish, then cancel
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=0.5))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            log.exception("error while closing the gRPC event loop")
        finally:
            loop.close()


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"
