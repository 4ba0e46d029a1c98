"""Generate the provisioned Grafana dashboards: `python grafana/build_dashboards.py`.

The JSON in grafana/dashboards/ is what Grafana loads; grafana/dashboard_builder/ is its source, so that
ids, grid positions and data source references stay consistent across five dashboards. Edit there,
regenerate, commit both (tests/stack/test_dashboards.py fails when the JSON is stale).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from dashboard_builder import dependencies, jobs, logs_traces, overview, runtime
from dashboard_builder.queries import Json

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "platform-overview.json": overview.build,
    "platform-runtime.json": runtime.build,
    "platform-dependencies.json": dependencies.build,
    "platform-logs-traces.json": logs_traces.build,
    "platform-jobs.json": jobs.build,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as written to grafana/dashboards/."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
