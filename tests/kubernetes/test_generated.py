"""deploy/kubernetes/monitoring/generated/ is current and says exactly what its sources say.

The rules live in prometheus/rules/ only: the PrometheusRule objects carry the same groups, promtool
accepts them, and the rule unit tests of prometheus/tests/ pass against them. Dashboards, data sources
and the alert-sink script are carried verbatim (data sources with in-cluster addresses).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.conftest import ROOT
from tests.kubernetes.manifests import DEPLOY, load_yaml, named, of_kind, render
from tests.stack.promtool import assert_promtool_ok

RULES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
# Services of the Helm releases (deploy/kubernetes/helm/, fullnameOverride or release name) and their
# ports, in the namespace Grafana runs in.
HELM_SERVICES = {"kps-prometheus": 9090, "kps-alertmanager": 9093, "loki": 3100, "tempo": 3200}


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_rules_are_exactly_the_rule_files() -> None:
    objects = render("monitoring")
    rules = {o["metadata"]["name"]: o["spec"] for o in of_kind(objects, "PrometheusRule")}
    assert rules == {path.stem: {"groups": load_yaml(path)["groups"]} for path in RULES}


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    """`promtool check rules`, then prometheus/tests/ run against the rules as the operator loads them."""
    extracted = []
    for rule in of_kind(render("monitoring"), "PrometheusRule"):
        path = tmp_path / "rules" / f"{rule['metadata']['name']}.yml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
        extracted.append(path)
    assert_promtool_ok("check", "rules", *extracted)

    tests = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
    assert tests
    for test in tests:
        spec = load_yaml(test)
        sources = [Path(f).name for f in spec["rule_files"]]
        assert set(sources) <= {p.name for p in extracted}, test.name
        spec["rule_files"] = [f"rules/{name}" for name in sources]
        (tmp_path / test.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    assert_promtool_ok("test", "rules", *(t.name for t in tests), cwd=tmp_path)


def test_dashboards_are_the_json_files_for_the_grafana_sidecar() -> None:
    objects = render("monitoring")
    maps = [o for o in of_kind(objects, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard")]
    files = {p.name: p.read_text() for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    assert {k: v for o in maps for k, v in o["data"].items()} == files
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "Platform"
        for text in config_map["data"].values():
            json.loads(text)


def test_datasources_are_compose_ones_with_in_cluster_addresses() -> None:
    objects = render("monitoring")
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["labels"].get("grafana_datasource")
    ]
    (text,) = config_map["data"].values()
    generated = yaml.safe_load(text)["datasources"]
    compose = load_yaml(ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml")["datasources"]
    assert [d["uid"] for d in generated] == [d["uid"] for d in compose]
    for ours, theirs in zip(generated, compose, strict=True):
        assert {k: v for k, v in ours.items() if k != "url"} == {
            k: v for k, v in theirs.items() if k != "url"
        }
        url = urlsplit(ours["url"])
        assert HELM_SERVICES.get(url.hostname or "") == url.port, ours["url"]


def test_alert_sink_runs_the_script_of_the_compose_stack() -> None:
    objects = render("monitoring")
    script = ROOT / "alertmanager" / "sink" / "alert_sink.py"
    assert named(objects, "ConfigMap", "alert-sink")["data"] == {script.name: script.read_text()}
    pod = named(objects, "Deployment", "alert-sink")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    assert container["args"] == ["python", f"{mount['mountPath']}/{script.name}"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "alert-sink"
