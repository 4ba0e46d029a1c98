"""grafana/: dashboards parse and are current, reference only provisioned data sources, and every PromQL
expression is valid (promtool) and reads only names from the telemetry contract."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.stack.contract import allowed_names
from tests.stack.panel_queries import (
    DASHBOARDS_DIR,
    PanelQuery,
    iter_panels,
    load_dashboards,
    panel_queries,
    source_of,
    target_datasource_uid,
)
from tests.stack.promql import metric_names
from tests.stack.promtool import assert_promtool_ok, run_promtool
from tests.stack.queries import datasource_queries, variable_query

GRAFANA = ROOT / "grafana"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS_FILE = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
COMPOSE = ROOT / "compose.yaml"
DOTENV = ROOT / ".env"

EXPECTED_UIDS = {
    "platform-overview",
    "platform-runtime",
    "platform-dependencies",
    "platform-logs-traces",
    "platform-jobs",
}
DATASOURCE_UIDS = {
    "prometheus": "prometheus",
    "loki": "loki",
    "tempo": "tempo",
    "alertmanager": "alertmanager",
}
BUILTIN_DATASOURCES = {"-- Grafana --"}
GRAFANA_BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__auto", "__all"}
# Grafana 12.4 (.env GRAFANA_IMAGE): its newest dashboard migration is schema 42.
SCHEMA_VERSION = 42

DASHBOARDS = load_dashboards()


def ids(items: dict[Path, dict[str, Any]]) -> list[str]:
    return [p.stem for p in items]


def generator_module(name: str = "build_dashboards") -> ModuleType:
    """A module of the dashboard generator, imported as `python grafana/build_dashboards.py` runs it: with
    grafana/ first on sys.path, where the script finds its dashboard_builder package."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(GRAFANA)
        return importlib.import_module(name)


def provisioned() -> list[dict[str, Any]]:
    datasources: list[dict[str, Any]] = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
    return datasources


def datasource(uid: str) -> dict[str, Any]:
    return next(ds for ds in provisioned() if ds["uid"] == uid)


def walk_datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from walk_datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_datasource_refs(item)


# ---- dashboards as files ---------------------------------------------------------------------------------


def test_dashboard_files_are_what_the_generator_writes() -> None:
    rendered = generator_module().render()
    on_disk = {p.name: p.read_text() for p in DASHBOARDS_DIR.glob("*.json")}
    assert set(rendered) == set(on_disk), "run: python grafana/build_dashboards.py"
    stale = [name for name, text in rendered.items() if on_disk[name] != text]
    assert not stale, f"stale dashboards {stale}: run python grafana/build_dashboards.py"


def test_the_dashboards_have_stable_unique_uids() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert sorted(uids) == sorted(EXPECTED_UIDS)
    for path, dash in DASHBOARDS.items():
        assert path.stem == dash["uid"], "file name and uid agree, so links are easy to follow"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_dashboard_shape(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert dash["title"] and dash["schemaVersion"] == SCHEMA_VERSION
    assert "platform" in dash["tags"]
    assert "id" not in dash or dash["id"] is None, "a provisioned dashboard must not pin a database id"
    panel_ids = [p["id"] for p in iter_panels(dash)]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in iter_panels(dash):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets") or panel["type"] == "alertlist", f"{panel['title']} has no query"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_dashboards_link_to_each_other(path: Path) -> None:
    links = DASHBOARDS[path]["links"]
    assert any(
        link["type"] == "dashboards" and link["tags"] == ["platform"] and link["includeVars"]
        for link in links
    )


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_only_provisioned_datasources_are_referenced(path: Path) -> None:
    types = {ds["uid"]: ds["type"] for ds in provisioned()}
    refs = list(walk_datasource_refs(DASHBOARDS[path]))
    assert refs
    for ref in refs:
        if ref.get("uid") in BUILTIN_DATASOURCES:
            continue
        assert ref.get("uid") in types, f"unknown data source {ref}"
        assert ref.get("type") == types[ref["uid"]], f"type mismatch for {ref}"


VARIABLE_USE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


def used_variables(node: Any) -> set[str]:
    text = json.dumps([node.get("panels", []), node.get("templating", {})])
    return {a or b or c for a, b, c in VARIABLE_USE.findall(text)}


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_every_variable_used_is_defined(path: Path) -> None:
    dash = DASHBOARDS[path]
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert used_variables(dash) - defined - GRAFANA_BUILTIN_VARIABLES == set()


def test_service_dashboards_are_templated_by_job_and_instance() -> None:
    for dash in DASHBOARDS.values():
        names = {v["name"] for v in dash["templating"]["list"]}
        if dash["uid"] == "platform-logs-traces":
            assert "service" in names
        else:
            assert {"job", "instance"} <= names, dash["uid"]
            instance = next(v for v in dash["templating"]["list"] if v["name"] == "instance")
            assert instance["includeAll"] and instance["allValue"] == ".*"


def test_no_query_pins_an_instance() -> None:
    for q in panel_queries({"instance": "$instance"}):
        for match in re.finditer(r'instance\s*(=~|=|!=|!~)\s*"([^"]*)"', q.expr):
            assert match.group(2) == "$instance", f"{q.dashboard_uid}/{q.panel_title}: {q.expr}"


def test_overview_has_alert_list_slo_panels_and_exemplar_heatmaps() -> None:
    overview = next(d for d in DASHBOARDS.values() if d["uid"] == "platform-overview")
    panels = list(iter_panels(overview))
    assert any(p["type"] == "alertlist" for p in panels)
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert len(heatmaps) == 2
    for heatmap in heatmaps:
        assert all(t["exemplar"] and t["format"] == "heatmap" for t in heatmap["targets"])
    exprs = json.dumps(panels)
    assert "platform:request_error_ratio:rate30d" in exprs and "platform:request_error_ratio:rate1h" in exprs


def test_runtime_and_dependency_panels_cover_the_issue() -> None:
    by_uid = {d["uid"]: json.dumps(d) for d in DASHBOARDS.values()}
    for name in (
        "platform_eventloop_delay_seconds_bucket",
        "platform_thread_wakeup_delay_seconds_bucket",
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "cpython_gc_collections_total",
        "http_server_active_requests",
        "platform_pool_queued",
        "platform_pool_rejections_total",
        "platform_workers",
    ):
        assert name in by_uid["platform-runtime"], name
    for name in (
        "platform_circuit_breaker_state",
        "http_client_request_duration_seconds_bucket",
        "platform_retry_attempts_total",
        "platform_ratelimit_decisions_total",
        "platform_cache_requests_total",
        "db_client_operation_duration_seconds_bucket",
    ):
        assert name in by_uid["platform-dependencies"], name
    logs = next(d for d in DASHBOARDS.values() if d["uid"] == "platform-logs-traces")
    kinds = {
        (p["type"], target_datasource_uid(p, t)) for p in iter_panels(logs) for t in p.get("targets", [])
    }
    assert {("timeseries", "loki"), ("logs", "loki"), ("table", "tempo")} <= kinds


# ---- PromQL: valid, and only contract names ----------------------------------------------------------


def datasource_promql() -> list[PanelQuery]:
    """The PromQL that datasources.yml's links run (Tempo's trace-to-metrics queries), made concrete."""
    queries = [q for q in datasource_queries() if q.language == "promql"]
    return [PanelQuery("datasources", q.where, q.text, source_of(q.text)) for q in queries]


def variable_selectors() -> list[PanelQuery]:
    """label_values(<selector>, label) of every Prometheus variable, as a selector PromQL can parse."""
    out = []
    for dash in DASHBOARDS.values():
        for var in dash["templating"]["list"]:
            query = variable_query(var, f"{dash['uid']}: variable {var['name']}")
            if query is not None and query.language == "promql":
                out.append(PanelQuery(dash["uid"], f"variable {var['name']}", query.text, "service"))
    return out


ALL_PROMQL = panel_queries() + datasource_promql() + variable_selectors()


def test_every_promql_expression_is_valid_for_promtool(tmp_path: Path) -> None:
    rule_file = tmp_path / "dashboard-expressions.yml"
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": q.expr} for i, q in enumerate(ALL_PROMQL)]
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool("check", "rules", rule_file)
    if result.returncode != 0:
        # Name the panel: promtool only reports the rule's position.
        bad = [
            f"{q.dashboard_uid} / {q.panel_title}: {q.expr}"
            for i, q in enumerate(ALL_PROMQL)
            if f"dashboard:expr_{i}:check" in result.stdout + result.stderr
        ]
        pytest.fail(f"promtool rejected dashboard PromQL:\n{result.stdout}{result.stderr}\n" + "\n".join(bad))
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    rule_file = tmp_path / "broken.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x:y:z", "expr": "sum by (job) (rate(up[1m])"}]}]}
        )
    )
    assert run_promtool("check", "rules", rule_file).returncode != 0


@pytest.mark.parametrize("query", ALL_PROMQL, ids=lambda q: f"{q.dashboard_uid}/{q.panel_title}")
def test_promql_reads_only_contract_names(query: PanelQuery) -> None:
    names = metric_names(query.expr)
    unknown = names - allowed_names()
    assert not unknown, f"not in docs/telemetry.md nor recorded by prometheus/rules/: {sorted(unknown)}"


def test_panel_queries_cover_every_prometheus_panel_and_mark_stack_only_ones() -> None:
    queries = panel_queries()
    assert {q.dashboard_uid for q in queries} == EXPECTED_UIDS
    prom_panels = {
        (d["uid"], p["title"])
        for d in DASHBOARDS.values()
        for p in iter_panels(d)
        if any(target_datasource_uid(p, t) == "prometheus" for t in p.get("targets", []))
    }
    assert {(q.dashboard_uid, q.panel_title) for q in queries} == prom_panels
    for q in queries:
        assert "$" not in q.expr, q
        stack_only = any(
            n.startswith(("traces_", "otelcol_", "platform:otelcol_")) for n in metric_names(q.expr)
        )
        assert q.source == ("stack" if stack_only else "service"), q
    assert {q.source for q in queries} == {"service", "stack"}


def test_panel_queries_take_variable_overrides() -> None:
    queries = panel_queries({"job": "platform/quotes-upstream", "__rate_interval": "30s"})
    assert all('job=~"platform/platform-api"' not in q.expr for q in queries)
    assert any('job=~"platform/quotes-upstream"' in q.expr and "[30s]" in q.expr for q in queries)


# ---- provisioning ---------------------------------------------------------------------------------------


def test_datasource_uids_are_fixed() -> None:
    assert {ds["uid"]: ds["type"] for ds in provisioned()} == DATASOURCE_UIDS
    assert [ds["uid"] for ds in provisioned() if ds.get("isDefault")] == ["prometheus"]


def test_datasources_are_linked_both_ways() -> None:
    prom = datasource("prometheus")["jsonData"]
    assert prom["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "Open trace in Tempo"}
    ]
    assert prom["alertmanagerUid"] == "alertmanager" and prom["manageAlerts"] is True

    tempo = datasource("tempo")["jsonData"]
    logs = tempo["tracesToLogsV2"]
    assert logs["datasourceUid"] == "loki"
    assert {"key": "service.name", "value": "service_name"} in logs["tags"]
    # Filter by the trace id (structured metadata) and the service: both must be in the query.
    assert logs["customQuery"] and "trace_id=" in logs["query"] and "__trace.traceId" in logs["query"]
    assert "__tags" in logs["query"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus" and tempo["tracesToMetrics"]["queries"]
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    assert tempo["nodeGraph"]["enabled"] is True
    assert tempo["lokiSearch"]["datasourceUid"] == "loki"

    derived = datasource("loki")["jsonData"]["derivedFields"]
    label_field = next(f for f in derived if f.get("matcherType") == "label")
    assert label_field["matcherRegex"] == "trace_id" and label_field["datasourceUid"] == "tempo"
    assert all(f["datasourceUid"] == "tempo" and f["url"] == "$${__value.raw}" for f in derived)
    json_field = next(f for f in derived if f.get("matcherType") == "regex")
    line = '{"level": "INFO", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}'
    match = re.search(json_field["matcherRegex"], line)
    assert match and match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"

    assert datasource("alertmanager")["jsonData"]["implementation"] == "prometheus"


def test_every_dollar_in_provisioning_is_escaped() -> None:
    # Grafana expands $VAR and ${VAR} from the environment in provisioning files; queries need $$.
    for path in (GRAFANA / "provisioning").rglob("*.yml"):
        text = "\n".join(
            line.split("#", 1)[0] if line.lstrip().startswith("#") else line
            for line in path.read_text().splitlines()
        )
        assert not re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")), f"unescaped $ in {path}"


def compose() -> dict[str, Any]:
    if not COMPOSE.exists():
        pytest.fail("compose.yaml is missing: provisioning is checked against it")
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_datasource_urls_are_compose_services() -> None:
    services = compose()["services"]
    ports = {"prometheus": 9090, "loki": 3100, "tempo": 3200, "alertmanager": 9093}
    for ds in provisioned():
        match = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"])
        assert match, ds["url"]
        host, port = match.group(1), int(match.group(2))
        assert host in services, f"{ds['name']} points at {host}, not a compose service"
        assert port == ports[host]


def test_grafana_mounts_and_provider_path_agree_with_compose() -> None:
    volumes = compose()["services"]["grafana"]["volumes"]
    assert any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in volumes)
    assert any(v.startswith("./grafana/dashboards:/var/lib/grafana/dashboards") for v in volumes)
    provider = yaml.safe_load(PROVIDERS_FILE.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def dotenv() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in DOTENV.read_text().splitlines() if "=" in line and line[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


def test_pinned_versions_match_what_provisioning_assumes() -> None:
    env = dotenv()
    prom_version = env["PROMETHEUS_IMAGE"].rsplit(":v", 1)[1]
    assert datasource("prometheus")["jsonData"]["prometheusVersion"] == prom_version
    grafana_version = env["GRAFANA_IMAGE"].rsplit(":", 1)[1]
    assert grafana_version.startswith("12."), "schemaVersion 42 is chosen for Grafana 12.x"
    assert generator_module("dashboard_builder.panels").SCHEMA_VERSION == SCHEMA_VERSION


def test_loki_and_tempo_queries_select_the_service() -> None:
    logs = next(d for d in DASHBOARDS.values() if d["uid"] == "platform-logs-traces")
    for panel in iter_panels(logs):
        for target in panel.get("targets", []):
            uid = target_datasource_uid(panel, target)
            if uid == "loki":
                assert 'service_name="$service"' in target["expr"], panel["title"]
            elif uid == "tempo":
                assert 'resource.service.name = "$service"' in target["query"], panel["title"]


def test_promtool_is_found() -> None:
    assert "promtool" in assert_promtool_ok("--version")
