"""Observable gauges that many live objects feed, one instrument per process.

The OpenTelemetry SDK keeps the callbacks of the FIRST registration of an observable instrument and
silently drops those of later ones with the same name. Two item stores, two breakers or two pools in one
process (tests run two "workers" side by side) would therefore lose all but one source. Here each gauge
is registered once, on first use (never at import), and its single callback reads every live source,
combining equal attribute sets with `sum` (sizes, queue depths) or `max` (0/1 state gauges).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

Reading = tuple[float, Mapping[str, str]]
Source = Callable[[], Iterable[Reading]]

_registry: dict[str, SharedGauge] = {}
_registry_lock = threading.Lock()


class SharedGauge:
    def __init__(self, meter_name: str, name: str, *, unit: str, description: str, combine: str) -> None:
        self._combine = max if combine == "max" else sum
        self._lock = threading.Lock()
        self._sources: dict[int, Callable[[], Source | None]] = {}
        self._next_id = 0
        metrics.get_meter(meter_name).create_observable_gauge(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, source: Source) -> Callable[[], None]:
        """Start reading `source` at each collection; returns the function that stops it.

        Bound methods are held weakly, so a forgotten object never keeps reporting (or stays alive).
        """
        ref: Callable[[], Source | None]
        if hasattr(source, "__self__") and hasattr(source, "__func__"):
            ref = weakref.WeakMethod(source)
        else:

            def ref() -> Source | None:
                return source

        with self._lock:
            source_id = self._next_id
            self._next_id += 1
            self._sources[source_id] = ref

        def remove() -> None:
            with self._lock:
                self._sources.pop(source_id, None)

        return remove

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            refs = list(self._sources.items())
        combined: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for source_id, ref in refs:
            source = ref()
            if source is None:
                with self._lock:
                    self._sources.pop(source_id, None)
                continue
            for value, attrs in source():
                combined.setdefault(tuple(sorted(attrs.items())), []).append(value)
        return [Observation(self._combine(values), dict(key)) for key, values in combined.items()]


def shared_gauge(
    meter_name: str,
    name: str,
    *,
    unit: str = "",
    description: str = "",
    combine: Literal["sum", "max"] = "sum",
) -> SharedGauge:
    """The process-wide gauge called `name`, registered with the global meter provider on first use."""
    with _registry_lock:
        gauge = _registry.get(name)
        if gauge is None:
            gauge = _registry[name] = SharedGauge(
                meter_name, name, unit=unit, description=description, combine=combine
            )
        return gauge
