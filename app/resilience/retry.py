"""Retry with exponential backoff and FULL jitter, inside one overall deadline.

Full jitter (sleep uniformly in [0, min(cap, base * 2**attempt)]) spreads the retries of many callers that
failed together, so a recovering dependency is not hit by synchronized waves (AWS Architecture Blog,
"Exponential Backoff And Jitter"). Only errors the `retryable` predicate accepts are retried, and the
policy never sleeps past the deadline: if the next backoff would end after it, it gives up at once.

Every attempt is counted once in `platform.retry.attempts` {dependency, outcome}: `success`, `retry`
(failed, will be tried again) or `gave_up` (failed, no further attempt). Retries are also span events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from opentelemetry import metrics, trace

T = TypeVar("T")


def _always(_exc: BaseException) -> bool:
    return True


OUTCOMES = ("success", "retry", "gave_up")


class RetryPolicy:
    def __init__(
        self,
        *,
        dependency: str,
        max_attempts: int = 3,
        base_s: float = 0.05,
        cap_s: float = 1.0,
        deadline_s: float = 2.5,
        retryable: Callable[[BaseException], bool] = _always,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or base_s < 0 or cap_s < 0 or deadline_s <= 0:
            raise ValueError("retry policy needs max_attempts >= 1, base_s >= 0, cap_s >= 0, deadline_s > 0")
        self.dependency = dependency
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.deadline_s = deadline_s
        self._retryable = retryable
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._attempts = metrics.get_meter("app.resilience.retry").create_counter(
            "platform.retry.attempts", unit="{attempt}", description="Attempts at calling a dependency"
        )
        for outcome in OUTCOMES:  # every series from the start, at 0
            self._attempts.add(0, {"dependency": self.dependency, "outcome": outcome})

    def backoff_bound_s(self, attempt: int) -> float:
        """Upper bound of the sleep after failed attempt number `attempt` (0-based)."""
        return float(min(self.cap_s, self.base_s * 2**attempt))

    def call(self, fn: Callable[[float], T], *, deadline_s: float | None = None) -> T:
        """Call `fn(remaining_s)` until it succeeds, fails for good, or the deadline leaves no room.

        The deadline is the policy's, or `deadline_s` when that is shorter (a caller's own deadline, e.g. a
        gRPC client's). `remaining_s` is the time left before it, so each attempt can bound its own timeouts
        by it. The last error propagates unchanged.
        """
        budget = self.deadline_s if deadline_s is None else min(self.deadline_s, max(0.0, deadline_s))
        deadline = self._clock() + budget
        attempt = 0
        while True:
            try:
                result = fn(max(0.0, deadline - self._clock()))
            except Exception as exc:
                delay = self._rng.uniform(0.0, self.backoff_bound_s(attempt))
                last = attempt + 1 >= self.max_attempts
                if last or not self._retryable(exc) or self._clock() + delay >= deadline:
                    self._count("gave_up")
                    raise
                self._count("retry")
                trace.get_current_span().add_event(
                    "retry",
                    {"retry.attempt": attempt + 1, "retry.delay_s": delay, "error.type": type(exc).__name__},
                )
                self._sleep(delay)
                attempt += 1
                continue
            self._count("success")
            return result

    def _count(self, outcome: str) -> None:
        self._attempts.add(1, {"dependency": self.dependency, "outcome": outcome})
