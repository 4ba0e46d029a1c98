"""Runtime probes: how late the gRPC event loop and the request threads get to run.

`LoopLagProbe` sleeps on the loop and records how much later than asked it woke up (`loop.time()` drift):
anything that blocks the loop (a sync call in a coroutine, a long callback) shows up directly.
`WakeupDelaySampler` does the same on a plain daemon thread: a thread that asked to wake up but cannot get
the GIL or a CPU is late by exactly the time the request threads also wait, so it measures GIL/CPU
starvation of the whole process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable

from opentelemetry import metrics

from app.telemetry.buckets import LAG_BUCKETS_S

_METER = "app.runtime.probes"


class LoopLagProbe:
    """Records the scheduling delay of `loop` into `platform.eventloop.delay{loop=<loop_name>}` (s)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval_s: float = 0.1,
        *,
        loop_name: str = "grpc",
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._loop = loop
        self._interval_s = interval_s
        self._attributes = {"loop": loop_name}
        self._histogram = metrics.get_meter(_METER, meter_provider=meter_provider).create_histogram(
            "platform.eventloop.delay",
            unit="s",
            description="How late the event loop ran a timer that was due (sleep overshoot)",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS_S,
        )
        self._future: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._future is not None and not self._future.done()

    def start(self) -> None:
        """Schedule the probe on the loop; callable from any thread, a no-op when already running."""
        with self._lock:
            if self._future is not None and not self._future.done():
                return
            self._future = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    def stop(self) -> None:
        """Cancel the probe; callable from any thread (including the loop's), does not wait."""
        with self._lock:
            future, self._future = self._future, None
        if future is not None:
            # Future.cancel hands the cancellation to the loop thread-safely; on a closed loop it is a no-op.
            future.cancel()

    async def _run(self) -> None:
        loop = self._loop
        interval = self._interval_s
        record = self._histogram.record
        attributes = self._attributes
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            record(max(0.0, loop.time() - started - interval), attributes)


class WakeupDelaySampler:
    """A daemon thread recording its wake-up overshoot into `platform.thread.wakeup_delay` (s)."""

    def __init__(
        self,
        interval_s: float = 0.05,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._interval_s = interval_s
        self._clock = clock
        self._histogram = metrics.get_meter(_METER, meter_provider=meter_provider).create_histogram(
            "platform.thread.wakeup_delay",
            unit="s",
            description="How late a sleeping thread woke up (GIL or CPU starvation)",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS_S,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="wakeup-delay-sampler", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self, stop: threading.Event) -> None:
        interval = self._interval_s
        clock = self._clock
        record = self._histogram.record
        while True:
            started = clock()
            if stop.wait(interval):
                return
            record(max(0.0, clock() - started - interval))
