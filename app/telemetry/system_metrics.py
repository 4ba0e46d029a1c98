"""Process metrics from the contrib system-metrics instrumentation, limited to the contract's four.

opentelemetry-instrumentation-system-metrics 0.66b1 still labels `process.cpu.time` with `type`; the
semantic conventions (and docs/telemetry.md) say `cpu.mode`, so that one callback is replaced here.
Its `cpython.gc.collections` also carries a deprecated `generation` duplicate of `cpython.gc.generation`;
a view in app.telemetry.setup keeps only the latter.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.metrics import CallbackOptions, Observation

# Exactly the process metrics of docs/telemetry.md.
SYSTEM_METRICS_CONFIG: dict[str, list[str] | None] = {
    "process.cpu.time": ["user", "system"],
    "process.memory.usage": None,
    "process.thread.count": None,
    "cpython.gc.collections": None,
}


class ProcessMetricsInstrumentor(SystemMetricsInstrumentor):
    def __init__(self) -> None:
        super().__init__(config=SYSTEM_METRICS_CONFIG)

    def _get_cpu_time(self, options: CallbackOptions) -> Iterable[Observation]:
        times = self._proc.cpu_times()
        for mode in self._config["process.cpu.time"] or ():
            if hasattr(times, mode):
                yield Observation(getattr(times, mode), {"cpu.mode": mode})
