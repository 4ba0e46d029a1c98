"""prometheus/rules/: valid for promtool 2.42, unit-tested per alert, consistent with docs and dashboards."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.stack.contract import RULES_DIR, allowed_names, rules
from tests.stack.panel_queries import load_dashboards
from tests.stack.promql import metric_names
from tests.stack.promtool import assert_promtool_ok

RULE_TESTS_DIR = ROOT / "prometheus" / "tests"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SLO_DOC = ROOT / "docs" / "slo.md"
COMPOSE = ROOT / "compose.yaml"

# The two link bases every alert uses (prometheus/rules/platform-alerts.yml header).
RUNBOOK_BASE = "https://github.com/example/platform/blob/main/docs/runbooks.md"
GRAFANA_BASE = "http://127.0.0.1:3000"
SEVERITIES = {"page", "ticket"}
# Alerts whose value carries no information (1, or absent()'s 1): their description names the subject.
NO_VALUE_ALERTS = {"PlatformServiceDown", "PlatformTelemetryAbsent", "PlatformCircuitBreakerOpen"}


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


ALERT_NAMES = [r["alert"] for r in alert_rules()]


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def test_promtool_check_rules() -> None:
    out = assert_promtool_ok("check", "rules", *sorted(RULES_DIR.glob("*.yml")))
    assert out.count("SUCCESS") == len(list(RULES_DIR.glob("*.yml")))


def test_promtool_test_rules() -> None:
    files = rule_test_files()
    assert files, "no promtool test files in prometheus/tests/"
    assert_promtool_ok("test", "rules", *files)


def test_the_expected_alerts_exist() -> None:
    assert sorted(ALERT_NAMES) == sorted(
        {
            "PlatformErrorBudgetBurnFast",
            "PlatformErrorBudgetBurnSlow",
            "PlatformHighLatencyP99",
            "PlatformEventLoopLag",
            "PlatformCircuitBreakerOpen",
            "PlatformServiceDown",
            "PlatformTelemetryAbsent",
            "PlatformCollectorDroppingData",
            "PlatformJobsBacklog",
            "PlatformJobsDeadLettered",
        }
    )


def alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "silent": n} over every alert_rule_test in prometheus/tests/."""
    cases: dict[str, dict[str, int]] = {}
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], {"fires": 0, "silent": 0})
                counts["fires" if case.get("exp_alerts") else "silent"] += 1
    return cases


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_every_alert_has_a_firing_and_a_silent_promtool_case(alertname: str) -> None:
    counts = alert_cases().get(alertname, {"fires": 0, "silent": 0})
    assert counts["fires"] >= 1, f"no promtool case where {alertname} fires"
    assert counts["silent"] >= 1, f"no promtool case where {alertname} stays silent"


def test_firing_cases_assert_severity_and_every_annotation() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    for path in rule_test_files():
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    rule = by_name[case["alertname"]]
                    assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], path
                    assert set(alert["exp_annotations"]) == set(rule["annotations"]), path


def github_anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_NAMES)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert name.startswith("Platform")
    assert rule["labels"]["severity"] in SEVERITIES
    ann = rule["annotations"]
    assert set(ann) >= {"summary", "description", "runbook_url", "dashboard"}
    assert "{{" in ann["summary"] and "{{" in ann["description"]
    if name not in NO_VALUE_ALERTS:
        assert "$value" in ann["description"], f"{name}: the description should show the value"
    assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
    assert name.lower() in github_anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no section {name}"
    match = re.fullmatch(re.escape(GRAFANA_BASE) + r"/d/([\w-]+)(\?.*)?", ann["dashboard"])
    assert match, ann["dashboard"]
    uids = {d["uid"] for d in load_dashboards().values()}
    assert match.group(1) in uids, f"{name} links to dashboard {match.group(1)}, which is not provisioned"


def test_runbooks_have_one_section_per_alert_and_no_orphans() -> None:
    text = RUNBOOKS.read_text()
    sections = {line[3:].strip() for line in text.splitlines() if line.startswith("## ")}
    alert_sections = {s for s in sections if s.startswith("Platform")}
    assert alert_sections == set(ALERT_NAMES)


def test_grafana_base_is_what_compose_serves() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    root_url = grafana["environment"]["GF_SERVER_ROOT_URL"]
    assert root_url.replace("${GRAFANA_PORT}", "3000").rstrip("/") == GRAFANA_BASE


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rules_read_only_contract_names(rule: dict[str, Any]) -> None:
    unknown = metric_names(rule["expr"]) - allowed_names()
    assert not unknown, f"not in docs/telemetry.md nor recorded by a rule: {sorted(unknown)}"


def test_recording_rules_are_prefixed_platform() -> None:
    for rule in rules():
        if "record" in rule:
            assert rule["record"].startswith("platform:"), rule["record"]


def test_every_slo_window_has_requests_errors_and_ratio() -> None:
    recorded = [(r["record"], r.get("labels", {}).get("transport")) for r in rules() if "record" in r]
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        for transport in ("http", "grpc"):
            assert (f"platform:requests:rate{window}", transport) in recorded
            assert (f"platform:request_errors:rate{window}", transport) in recorded
        assert (f"platform:request_error_ratio:rate{window}", None) in recorded


def test_rules_and_slo_doc_state_the_same_numbers() -> None:
    slo = SLO_DOC.read_text()
    alerts = (RULES_DIR / "platform-alerts.yml").read_text()
    assert "99.5%" in slo and "0.005" in slo
    burn_exprs = "".join(r["expr"] for r in alert_rules() if r["alert"].startswith("PlatformErrorBudgetBurn"))
    assert burn_exprs.count("/ 0.005 >") == 8  # every burn-rate condition divides by the same budget
    table = (("14.4", "1h", "5m"), ("6", "6h", "30m"), ("3", "1d", "2h"), ("1", "3d", "6h"))
    for factor, long_w, short_w in table:
        assert re.search(rf"rate{long_w}\{{[^}}]*\}} / 0\.005 > {re.escape(factor)}\n", alerts), factor
        assert re.search(rf"rate{short_w}\{{[^}}]*\}} / 0\.005 > {re.escape(factor)}\n", alerts), factor
        assert re.search(rf"\|\s*{re.escape(factor)}x?\s*\|\s*{long_w}\s*\|\s*{short_w}\s*\|", slo), (
            f"docs/slo.md's burn-rate table lacks {factor}x over {long_w} and {short_w}"
        )
    latency = next(r for r in alert_rules() if r["alert"] == "PlatformHighLatencyP99")
    assert latency["expr"].strip().endswith("> 0.5") and "500 ms" in slo
