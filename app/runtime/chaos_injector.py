"""Applies the shared chaos state inside one worker: blocks the gRPC event loop or holds the GIL.

Both faults are periodic (once a second while set), so the lag and wake-up histograms, and the alerts
on them, move for as long as an operator keeps the fault on (it expires by itself, see app.domain.chaos).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from app.domain.chaos import ChaosState

log = logging.getLogger(__name__)


def hold_gil(ms: int) -> None:
    """Hold the GIL for about `ms`: `sum` over a range runs in C and never yields it to other threads."""
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        sum(range(200_000))  # ~2-4 ms per call on this class of machine, GIL held throughout


class ChaosInjector:
    def __init__(
        self,
        get_state: Callable[[], ChaosState],
        loop: asyncio.AbstractEventLoop | None,
        period_s: float = 1.0,
    ) -> None:
        self._get_state = get_state
        self._loop = loop
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-injector", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                state = self._get_state()
                if state.loop_block_ms and self._loop is not None and not self._loop.is_closed():
                    # time.sleep on the loop thread: the loop can run nothing else meanwhile.
                    self._loop.call_soon_threadsafe(time.sleep, state.loop_block_ms / 1000)
                if state.gil_block_ms:
                    hold_gil(state.gil_block_ms)
            except Exception:  # never let a fault injector take the worker down
                log.exception("chaos injector failed")
