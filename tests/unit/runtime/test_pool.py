from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.domain import context
from app.domain.errors import DeadlineExceeded, DependencyUnavailable, InvalidArgument, Overloaded
from app.runtime.pool import WorkerPool
from tests.conftest import wait_until
from tests.unit.conftest import Metrics

# -- tasks: module level, so the pool processes can unpickle them -------------------------------------------


def whoami() -> tuple[str, str, int]:
    ctx = context.current()
    return ctx.request_id, ctx.user, os.getpid()


def timed_sleep(seconds: float) -> tuple[int, int]:
    started = time.time_ns()
    time.sleep(seconds)
    return started, time.time_ns()


def fail_plainly() -> None:
    raise ValueError("bad input inside the task")


def fail_with_domain_error() -> None:
    raise InvalidArgument("too big", field="params.n", retry_after_s=2)


# -----------------------------------------------------------------------------------------------------------

PoolFactory = Callable[..., WorkerPool]


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    pools: list[WorkerPool] = []

    def make(processes: int = 1, queue_size: int = 4, task_timeout_s: float = 5.0) -> WorkerPool:
        pool = WorkerPool(processes, queue_size, task_timeout_s)
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(wait=False, timeout=5)


def run_in_thread(pool: WorkerPool, task: str, fn: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: _swallow(pool.run, task, fn, *args), daemon=True)
    thread.start()
    return thread


def _swallow(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(Exception):  # the test looks at the pool, not at this call's outcome
        fn(*args)


def test_runs_in_another_process_with_the_request_context(make_pool: PoolFactory) -> None:
    pool = make_pool()
    with context.bind(context.RequestContext(request_id="req-42", user="alice", transport="http")):
        request_id, user, pid = pool.run("whoami", whoami)
    assert (request_id, user) == ("req-42", "alice")
    assert pid != os.getpid()


def test_span_is_a_child_of_the_caller_with_the_childs_timing(
    make_pool: PoolFactory, spans: InMemorySpanExporter
) -> None:
    pool = make_pool(processes=1)
    blocker = run_in_thread(pool, "blocker", timed_sleep, 0.3)  # the nap has to queue behind it
    wait_until(lambda: pool.admitted == 1, timeout=5, message="blocker admitted")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        child_start, child_end = pool.run("nap", timed_sleep, 0.05)
    blocker.join(5)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "pool.nap"]
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.start_time is not None and span.end_time is not None
    # The span covers exactly what the child measured around the task (plus the child's own overhead).
    assert span.start_time <= child_start and child_end <= span.end_time
    # ...and not what the caller waited: the 0.2+ s in the queue are an attribute, not span time.
    assert (span.end_time - span.start_time) - (child_end - child_start) < 100_000_000
    assert span.attributes is not None
    assert span.attributes["pool.task"] == "nap"
    assert 0.15 <= float(span.attributes["pool.queue_wait_s"]) < 5.0  # type: ignore[arg-type]
    assert span.status.status_code is StatusCode.UNSET


def test_task_errors_propagate_and_mark_the_span(make_pool: PoolFactory, spans: InMemorySpanExporter) -> None:
    pool = make_pool()
    with pytest.raises(ValueError, match="bad input inside the task"):
        pool.run("plain", fail_plainly)
    with pytest.raises(InvalidArgument) as info:
        pool.run("domain", fail_with_domain_error)
    assert (info.value.detail, info.value.field, info.value.retry_after_s) == ("too big", "params.n", 2)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["pool.plain"].status.status_code is StatusCode.ERROR
    assert by_name["pool.domain"].status.status_code is StatusCode.ERROR
    assert pool.admitted == 0


def test_full_pool_rejects_at_once(make_pool: PoolFactory, metric_values: Metrics) -> None:
    pool = make_pool(processes=1, queue_size=2)
    task = f"nap-{uuid.uuid4().hex[:6]}"
    threads = [run_in_thread(pool, task, timed_sleep, 0.5) for _ in range(2)]
    wait_until(lambda: pool.admitted == 2, timeout=5, message="two tasks admitted")
    # One runs, one waits: the gauges split them.
    assert metric_values.value("platform.pool.active") >= 1
    assert metric_values.value("platform.pool.queued") >= 1
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        pool.run(task, whoami)
    assert time.monotonic() - started < 0.25  # not after waiting for a slot (0.5 s)
    assert info.value.retry_after_s == 1
    assert metric_values.value("platform.pool.rejections", task=task) == 1
    for thread in threads:
        thread.join(5)
    assert pool.admitted == 0
    assert metric_values.value("platform.pool.task.duration", task=task, outcome="ok") == 2


def test_timeout_raises_and_keeps_the_slot_until_the_task_really_ends(
    make_pool: PoolFactory, metric_values: Metrics, spans: InMemorySpanExporter
) -> None:
    pool = make_pool(processes=1, queue_size=4, task_timeout_s=0.2)
    task = f"slow-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        pool.run(task, timed_sleep, 0.8)
    assert 0.2 <= time.monotonic() - started < 0.75  # well before the task itself ends
    assert pool.admitted == 1  # still running in its process
    wait_until(lambda: pool.admitted == 0, timeout=5, message="the overrun task to end")
    assert metric_values.value("platform.pool.task.duration", task=task, outcome="timeout") == 1
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"pool.{task}"]
    assert span.status.status_code is StatusCode.ERROR


def test_close_drains_admitted_work_then_refuses(make_pool: PoolFactory) -> None:
    pool = make_pool()
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(pool.run("nap", timed_sleep, 0.3)))
    thread.start()
    wait_until(lambda: pool.admitted == 1, timeout=5, message="task admitted")
    pool.close(wait=True, timeout=5)
    thread.join(5)
    assert len(results) == 1  # it finished instead of being cut off
    with pytest.raises(DependencyUnavailable):
        pool.run("whoami", whoami)


def test_not_started_pool_refuses_and_creates_no_process() -> None:
    pool = WorkerPool(1, 1, 1.0)
    with pytest.raises(DependencyUnavailable):
        pool.run("whoami", whoami)
    pool.close()


@pytest.mark.parametrize(("processes", "queue_size", "timeout"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)])
def test_rejects_nonsense_sizes(processes: int, queue_size: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="pool needs"):
        WorkerPool(processes, queue_size, timeout)
