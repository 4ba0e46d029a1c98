"""Three-state circuit breaker over a count-based sliding window (the resilience4j model).

closed: calls pass; the outcomes of the last `window` calls are kept, and once at least `min_calls` are
  in the window and the share of failures reaches `failure_rate`, the breaker opens.
open: calls are rejected at once for `open_s`, giving the dependency room to recover.
half_open: `half_open_calls` probes are let through; all of them succeeding closes the breaker, any
  failure reopens it. Probes that never report back (a caller that died mid-call) would otherwise wedge
  the breaker, so after another `open_s` in half_open the probe permits are handed out again.

The open -> half_open move happens lazily, on the next look at the state, so the breaker owns no timer
thread. Everything is guarded by one lock; the critical sections are a few integer operations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from opentelemetry import metrics

from app.telemetry.gauges import Reading, shared_gauge

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
TRANSITIONS = ((CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN))


class CircuitOpen(Exception):
    """Raised by `CircuitBreaker.call` while the breaker rejects calls; callers map it to their own error."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        window: int = 20,
        min_calls: int = 10,
        failure_rate: float = 0.5,
        open_s: float = 10.0,
        half_open_calls: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1 or half_open_calls < 1 or open_s <= 0 or not 0 < failure_rate <= 1:
            raise ValueError(
                "breaker needs window >= 1, half_open_calls >= 1, open_s > 0, 0 < failure_rate <= 1"
            )
        if not 1 <= min_calls <= window:
            # Otherwise the window never holds enough calls and the breaker can never open.
            raise ValueError(
                f"breaker {name!r}: min_calls ({min_calls}) must be between 1 and window ({window})"
            )
        self.name = name
        self._window: deque[bool] = deque(maxlen=window)  # True = failure
        self._failures = 0
        self._min_calls = min_calls
        self._failure_rate = failure_rate
        self._open_s = open_s
        self._half_open_calls = half_open_calls
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._changed_at = clock()
        self._probes_admitted = 0
        self._probes_succeeded = 0

        meter = metrics.get_meter("app.resilience.breaker")
        self._calls = meter.create_counter(
            "platform.circuit_breaker.calls", unit="{call}", description="Calls through a circuit breaker"
        )
        self._transitions = meter.create_counter(
            "platform.circuit_breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state changes",
        )
        # Every series exists from the start, at 0: a panel shows 0, not "No data", and rate() sees the first
        # event (Prometheus instrumentation practice for label values known in advance).
        for outcome in ("success", "failure", "rejected"):
            self._calls.add(0, {"name": self.name, "outcome": outcome})
        for from_state, to_state in TRANSITIONS:
            self._transitions.add(0, {"name": self.name, "from_state": from_state, "to_state": to_state})
        self._unregister_gauge = shared_gauge(
            "app.resilience.breaker",
            "platform.circuit_breaker.state",
            description="1 for the breaker's current state, 0 for the others",
            combine="max",
        ).add(self._state_readings)

    # -- state ------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        with self._lock:
            self._advance()
            return self._state

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through; 0 unless open."""
        with self._lock:
            self._advance()
            if self._state != OPEN:
                return 0.0
            return max(0.0, self._changed_at + self._open_s - self._clock())

    def _advance(self) -> None:
        """Time-driven moves (lock held): open -> half_open, and re-arming a stuck half-open."""
        now = self._clock()
        if self._state == OPEN and now >= self._changed_at + self._open_s:
            self._move(HALF_OPEN)
        elif self._state == HALF_OPEN and now >= self._changed_at + self._open_s:
            self._changed_at = now
            self._probes_admitted = self._probes_succeeded

    def _move(self, to_state: str) -> None:
        from_state, self._state = self._state, to_state
        self._changed_at = self._clock()
        self._window.clear()
        self._failures = 0
        self._probes_admitted = self._probes_succeeded = 0
        self._transitions.add(1, {"name": self.name, "from_state": from_state, "to_state": to_state})
        log.warning("circuit breaker %s: %s -> %s", self.name, from_state, to_state)

    def _state_readings(self) -> Iterable[Reading]:
        current = self.state
        return [(1.0 if s == current else 0.0, {"name": self.name, "state": s}) for s in STATES]

    # -- calls ------------------------------------------------------------------------------------------

    def allow(self) -> bool:
        """Ask before a call; a True answer must be followed by record_success() or record_failure()."""
        with self._lock:
            self._advance()
            if self._state == CLOSED:
                return True
            if self._state == HALF_OPEN and self._probes_admitted < self._half_open_calls:
                self._probes_admitted += 1
                return True
        self._calls.add(1, {"name": self.name, "outcome": "rejected"})
        return False

    def record_success(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._probes_succeeded += 1
                if self._probes_succeeded >= self._half_open_calls:
                    self._move(CLOSED)
            elif self._state == CLOSED:
                self._push(failure=False)
        self._calls.add(1, {"name": self.name, "outcome": "success"})

    def record_failure(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._move(OPEN)
            elif self._state == CLOSED:
                self._push(failure=True)
                window = len(self._window)
                if window >= self._min_calls and self._failures / window >= self._failure_rate:
                    self._move(OPEN)
        self._calls.add(1, {"name": self.name, "outcome": "failure"})

    def _push(self, *, failure: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._failures -= 1  # the oldest outcome is about to fall out of the window
        self._window.append(failure)
        self._failures += failure

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` through the breaker: any exception counts as a failure and propagates."""
        if not self.allow():
            raise CircuitOpen(f"{self.name} circuit is open", retry_after_s=self.retry_after_s() or 1.0)
        try:
            result = fn()
        except BaseException:
            self.record_failure()
            raise
        self.record_success()
        return result

    def close(self) -> None:
        """Stop reporting the state gauge (the breaker keeps working)."""
        self._unregister_gauge()
