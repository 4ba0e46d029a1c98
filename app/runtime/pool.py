"""A bounded process pool for CPU-bound work, with the request's context and trace carried across.

- Processes come from a "forkserver": a clean single-threaded server process forks them, so a worker
  full of threads (gRPC, OTel exporters, HTTP threads) is never forked. The executor is created in
  `start()`, inside the gunicorn worker, never at import.
- Admission is bounded: at most `queue_size` tasks queued or running. Past that `run` raises Overloaded
  at once (load shedding with Retry-After) instead of queueing without bound.
- `run` waits at most `task_timeout_s` (from submission, queue wait included), then DeadlineExceeded.
  A task that overran keeps its admission slot until it really ends, so timed-out work cannot pile up.
- Tracing: the child times itself with its own wall clock; the parent records span `pool.<task>` as a
  child of the caller's span with exactly those start and end times, plus the queue wait. The caller's
  RequestContext is re-bound in the child, so anything it logs carries the request id.

Task functions must be module-level (picklable) and take picklable arguments.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.domain import context
from app.domain.errors import DeadlineExceeded, DependencyUnavailable, DomainError, Overloaded
from app.telemetry.buckets import DURATION_BUCKETS_S
from app.telemetry.gauges import Reading, shared_gauge

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Outcome:
    start_ns: int  # the child's wall clock when the task began
    end_ns: int
    ok: bool
    value: Any  # the result, or the exception the task raised


@dataclass(frozen=True, slots=True)
class _RemoteDomainError:
    """DomainError's keyword-only fields do not survive pickling; carry them explicitly."""

    cls: type[DomainError]
    detail: str
    field: str | None
    retry_after_s: float | None

    def rebuild(self) -> DomainError:
        return self.cls(self.detail, field=self.field, retry_after_s=self.retry_after_s)


def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], ctx: context.RequestContext) -> _Outcome:
    """Runs in the pool process."""
    start_ns = time.time_ns()
    with context.bind(ctx):
        try:
            value, ok = fn(*args), True
        except DomainError as exc:
            value, ok = _RemoteDomainError(type(exc), exc.detail, exc.field, exc.retry_after_s), False
        except Exception as exc:
            value, ok = exc, False
    return _Outcome(start_ns, time.time_ns(), ok, value)


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group. The pool's processes leave stopping to the worker that owns
    them (which closes the pool as on SIGTERM), instead of each printing a KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _noop() -> None:
    """Warm-up task: makes the pool start its processes before the first request needs them."""


class WorkerPool:
    def __init__(
        self,
        processes: int,
        queue_size: int,
        task_timeout_s: float,
        *,
        preload: Sequence[str] = (),
        tasks: Sequence[str] = (),
    ) -> None:
        """`tasks`: the task names callers will use, so that their metric series exist from the start."""
        if processes < 1 or queue_size < 1 or task_timeout_s <= 0:
            raise ValueError("pool needs processes >= 1, queue_size >= 1, task_timeout_s > 0")
        self.processes = processes
        self.queue_size = queue_size
        self.task_timeout_s = task_timeout_s
        self._preload = list(preload)
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(queue_size)
        self._admitted = 0
        self._drained = threading.Condition(self._lock)
        self._closing = False

        self._tracer = trace.get_tracer("app.runtime.pool")
        meter = metrics.get_meter("app.runtime.pool")
        self._rejections = meter.create_counter(
            "platform.pool.rejections", unit="{task}", description="Tasks refused because the pool was full"
        )
        for known in tasks:  # every known task's series from the start, at 0
            self._rejections.add(0, {"task": known})
        self._duration = meter.create_histogram(
            "platform.pool.task.duration",
            unit="s",
            description="Time a pool task ran (time waited, for timeouts)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._unregister = [
            shared_gauge("app.runtime.pool", "platform.pool.queued", unit="{task}").add(
                self._queued_readings
            ),
            shared_gauge("app.runtime.pool", "platform.pool.active", unit="{task}").add(
                self._active_readings
            ),
        ]

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the processes (in the worker, after fork) and wait, bounded, until they are up."""
        with self._lock:
            if self._executor is not None:
                return
            self._closing = False
            self._executor = self._new_executor()
            executor = self._executor
        warmups = [executor.submit(_noop) for _ in range(self.processes)]
        deadline = time.monotonic() + self.task_timeout_s
        for future in warmups:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # the pool still works; the first tasks just pay the start-up
                log.warning("worker pool warm-up did not finish: %s", type(exc).__name__)
                break

    def _new_executor(self) -> ProcessPoolExecutor:
        mp_context = multiprocessing.get_context("forkserver")
        if self._preload:
            mp_context.set_forkserver_preload(self._preload)
        return ProcessPoolExecutor(
            max_workers=self.processes, mp_context=mp_context, initializer=_ignore_interrupts
        )

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Refuse new tasks; with `wait`, let admitted ones finish within `timeout`; then stop processes."""
        limit = self.task_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            self._closing = True
            executor, self._executor = self._executor, None
            if wait:
                self._drained.wait_for(lambda: self._admitted == 0, timeout=limit)
        for unregister in self._unregister:
            unregister()
        if executor is None:
            return
        processes = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pool process %s did not stop in time; terminating it", process.pid)
                process.terminate()

    # -- gauges -----------------------------------------------------------------------------------------

    @property
    def admitted(self) -> int:
        """Tasks queued or running."""
        return self._admitted

    def _active(self) -> int:
        # The executor does not tell when a child picks a task up; with FIFO dispatch the running ones
        # are the first `processes` admitted, so this split is exact up to the hand-over instant.
        return min(self._admitted, self.processes)

    def _queued_readings(self) -> Iterable[Reading]:
        return [(float(self._admitted - self._active()), {})]

    def _active_readings(self) -> Iterable[Reading]:
        return [(float(self._active()), {})]

    # -- running tasks ----------------------------------------------------------------------------------

    def run(self, task: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a pool process and return its result (or raise what it raised)."""
        with self._lock:
            executor = self._executor
            if executor is None or self._closing:
                raise DependencyUnavailable("worker pool is not running", retry_after_s=1)
            if not self._slots.acquire(blocking=False):
                self._rejections.add(1, {"task": task})
                raise Overloaded("worker pool is full", retry_after_s=1)
            self._admitted += 1
        submitted_ns = time.time_ns()
        try:
            future: Future[_Outcome] = executor.submit(_invoke, fn, args, context.current())
        except (BrokenProcessPool, RuntimeError) as exc:
            self._release()
            self._replace_broken(executor)
            raise DependencyUnavailable("worker pool is restarting", retry_after_s=1) from exc
        future.add_done_callback(self._release)
        try:
            outcome = future.result(timeout=self.task_timeout_s)
        except TimeoutError:
            future.cancel()  # only helps if it has not been handed to a process yet
            self._record_timeout(task, submitted_ns)
            raise DeadlineExceeded(f"{task} did not finish within {self.task_timeout_s:g}s") from None
        except BrokenProcessPool as exc:
            self._replace_broken(executor)
            raise DependencyUnavailable("worker pool is restarting", retry_after_s=1) from exc
        return self._finish(task, submitted_ns, outcome)  # type: ignore[no-any-return]

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._admitted -= 1
            self._slots.release()
            if self._admitted == 0:
                self._drained.notify_all()

    def _replace_broken(self, executor: ProcessPoolExecutor) -> None:
        """A pool process died (OOM kill, segfault): the executor is unusable; start a fresh one."""
        with self._lock:
            if self._executor is not executor or self._closing:
                return
            log.error("worker pool broken (a process died); starting a new one")
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    def _finish(self, task: str, submitted_ns: int, outcome: _Outcome) -> Any:
        error: BaseException | None = None
        if not outcome.ok:
            value = outcome.value
            error = value.rebuild() if isinstance(value, _RemoteDomainError) else value
        attrs: dict[str, str | float] = {
            "pool.task": task,
            "pool.queue_wait_s": max(0.0, (outcome.start_ns - submitted_ns) / 1e9),
        }
        span = self._tracer.start_span(
            f"pool.{task}", kind=SpanKind.INTERNAL, start_time=outcome.start_ns, attributes=attrs
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end(end_time=outcome.end_ns)
        self._duration.record(
            (outcome.end_ns - outcome.start_ns) / 1e9,
            {"task": task, "outcome": "ok" if outcome.ok else "error"},
        )
        if error is not None:
            raise error
        return outcome.value

    def _record_timeout(self, task: str, submitted_ns: int) -> None:
        now_ns = time.time_ns()
        span = self._tracer.start_span(
            f"pool.{task}", kind=SpanKind.INTERNAL, start_time=submitted_ns, attributes={"pool.task": task}
        )
        span.set_status(Status(StatusCode.ERROR, "DeadlineExceeded"))
        span.end(end_time=now_ns)
        self._duration.record((now_ns - submitted_ns) / 1e9, {"task": task, "outcome": "timeout"})
