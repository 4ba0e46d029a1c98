"""prometheus/prometheus.yml: valid for promtool (less the documented v3-only keys), in line with compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.stack import prometheus_config as pc
from tests.stack.promtool import assert_promtool_ok, run_promtool

COMPOSE = ROOT / "compose.yaml"


def write_checkable_copy(tmp_path: Path, config: dict[str, object]) -> Path:
    """Config next to a `rules` link, so that its relative rule_files resolve as in the container."""
    (tmp_path / "rules").symlink_to(pc.RULES_DIR)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_promtool_check_config_passes_without_the_documented_v3_only_keys(tmp_path: Path) -> None:
    path = write_checkable_copy(tmp_path, pc.strip_v3_only(pc.load_config()))
    out = assert_promtool_ok("check", "config", path)
    # promtool also loads the rule files the config names: prove it found ours.
    assert "platform-alerts.yml" in out and "platform-recording.yml" in out, out


def test_the_v3_only_keys_are_exactly_what_promtool_rejects_and_are_documented(tmp_path: Path) -> None:
    config = pc.load_config()
    text = pc.CONFIG_FILE.read_text()
    for key in pc.V3_ONLY_KEYS:
        assert key in config, f"{key} listed as v3-only but not in prometheus.yml"
        assert f"`{key}:`" in text, f"{key} is not documented in prometheus.yml's header"
        # Putting it back must make promtool 2.42 fail: otherwise it is not v3-only and should be checked.
        (tmp_path / key).mkdir()
        path = write_checkable_copy(tmp_path / key, {**pc.strip_v3_only(config), key: config[key]})
        result = run_promtool("check", "config", path)
        assert result.returncode != 0 and f"field {key} not found" in result.stdout + result.stderr


def scrape_jobs() -> dict[str, dict[str, object]]:
    return {job["job_name"]: job for job in pc.load_config()["scrape_configs"]}


def targets_of(job: dict[str, object]) -> list[str]:
    return [t for sc in job["static_configs"] for t in sc["targets"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("job_name", "target"),
    [
        ("platform/platform-api", "app:8080"),
        ("platform/quotes-upstream", "upstream:8081"),
        ("otel-collector", "otel-collector:8888"),
        ("prometheus", "localhost:9090"),
        ("alertmanager", "alertmanager:9093"),
    ],
)
def test_scrape_targets(job_name: str, target: str) -> None:
    job = scrape_jobs()[job_name]
    assert targets_of(job) == [target]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_service_scrapes_keep_only_up_so_the_otlp_path_is_not_counted_twice() -> None:
    for name in (pc.API_JOB, pc.UPSTREAM_JOB):
        relabels = scrape_jobs()[name]["metric_relabel_configs"]
        assert relabels == [{"source_labels": ["__name__"], "regex": ".+", "action": "drop"}], name


def test_alerts_go_to_alertmanager_and_rules_are_the_rule_directory() -> None:
    config = pc.load_config()
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    assert config["rule_files"] == ["rules/*.yml"]
    assert sorted(p.name for p in pc.RULES_DIR.glob("*.yml")) == [
        "platform-alerts.yml",
        "platform-recording.yml",
    ]


def test_otlp_translation_matches_the_contract() -> None:
    # docs/telemetry.md names (unit and type suffixes) are what UnderscoreEscapingWithSuffixes produces.
    assert pc.load_config()["otlp"]["translation_strategy"] == "UnderscoreEscapingWithSuffixes"


def compose_service(name: str) -> dict[str, object]:
    if not COMPOSE.exists():
        pytest.fail("compose.yaml is missing: the stack configuration is checked against it")
    services: dict[str, dict[str, object]] = yaml.safe_load(COMPOSE.read_text())["services"]
    assert name in services, f"compose.yaml has no service {name}"
    return services[name]


def test_compose_runs_prometheus_with_what_this_config_needs() -> None:
    service = compose_service("prometheus")
    flags = service["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in flags  # type: ignore[operator]
    for flag in (
        "--web.enable-otlp-receiver",
        "--web.enable-remote-write-receiver",
        "--enable-feature=exemplar-storage",
    ):
        assert flag in flags, flag  # type: ignore[operator]
    assert any(str(v).startswith("./prometheus:/etc/prometheus") for v in service["volumes"])  # type: ignore[attr-defined]


def test_every_scrape_target_is_a_compose_service_port() -> None:
    exposed = {
        "app": {8080, 50051},
        "jobs": {8082},
        "upstream": {8081},
        "otel-collector": {8888},
        "alertmanager": {9093},
    }
    for job in scrape_jobs().values():
        for target in targets_of(job):
            host, port = target.rsplit(":", 1)
            if host == "localhost":
                continue
            compose_service(host)
            assert int(port) in exposed[host], target


def test_scrape_path_variant_is_valid_and_scrapes_the_given_targets(tmp_path: Path) -> None:
    config = pc.scrape_path_config("127.0.0.1:18080", "127.0.0.1:18081")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {pc.API_JOB, pc.UPSTREAM_JOB}
    assert targets_of(jobs[pc.API_JOB]) == ["127.0.0.1:18080"]
    assert all("metric_relabel_configs" not in job for job in jobs.values())
    path = pc.write_scrape_path_config(tmp_path, "127.0.0.1:18080", "127.0.0.1:18081")
    out = assert_promtool_ok("check", "config", path)
    assert "platform-alerts.yml" in out
