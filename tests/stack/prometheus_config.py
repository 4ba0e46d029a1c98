"""prometheus/prometheus.yml as data: the v3-only keys, and the scrape-path variant for real-process tests.

    from tests.stack.prometheus_config import write_scrape_path_config
    config_file = write_scrape_path_config(tmp_path, api="127.0.0.1:18080", upstream="127.0.0.1:18081")
    # prometheus --config.file=<config_file> --storage.tsdb.path=... --web.listen-address=127.0.0.1:<port>

The variant is derived from the bundled file, not written separately, so an end-to-end run proves the
bundled job names, rule files and scrape-path switch (docs/stack-metrics.md), with only the targets and
intervals changed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "prometheus"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"

# Top-level keys of prometheus.yml that Prometheus 3 knows and Debian's promtool 2.42 rejects. The file's
# header comment documents each; test_prometheus_config.py checks the two lists agree.
V3_ONLY_KEYS = ("otlp",)

API_JOB = "platform/platform-api"
UPSTREAM_JOB = "platform/quotes-upstream"
JOBS_JOB = "platform/platform-jobs"


def load_config(path: Path = CONFIG_FILE) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def strip_v3_only(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in V3_ONLY_KEYS}


def scrape_path_config(
    api: str,
    upstream: str,
    *,
    jobs: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rules_dir: Path = RULES_DIR,
) -> dict[str, Any]:
    """The bundled config switched to the scrape path, for Debian's Prometheus 2.42 on this machine.

    Keeps the service jobs (same job names, full /metrics instead of liveness only), points them at
    `api`, `upstream` and, if given, `jobs` (host:port), loads the rule files by absolute path, and drops
    what needs the compose stack: the collector, Alertmanager and self scrapes, the alerting section and
    v3-only keys.
    """
    config = strip_v3_only(copy.deepcopy(load_config()))
    targets = {API_JOB: api, UPSTREAM_JOB: upstream}
    if jobs is not None:
        targets[JOBS_JOB] = jobs
    kept = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job.pop("metric_relabel_configs", None)  # SCRAPE-PATH switch
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            job["scrape_interval"] = scrape_interval
            kept.append(job)
    missing = set(targets) - {job["job_name"] for job in kept}
    if missing:
        raise ValueError(f"prometheus.yml has no scrape job named {sorted(missing)}")
    config["scrape_configs"] = kept
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "evaluation_interval": evaluation_interval,
    }
    config["rule_files"] = [str(rules_dir.resolve() / "*.yml")]
    config.pop("alerting", None)
    return config


def write_scrape_path_config(directory: Path, api: str, upstream: str, **kwargs: Any) -> Path:
    """Write scrape_path_config(...) to directory/prometheus.yml and return its path."""
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(scrape_path_config(api, upstream, **kwargs), sort_keys=False))
    return path
