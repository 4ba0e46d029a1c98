"""The collector, Loki and Tempo configs, and how every address in the stack lines up.

No collector, Loki or Tempo binary runs here, so these tests hold each config to the shape its pinned
version documents and check cross-file consistency: every endpoint one component calls is a compose
service name and a port that the target's own config (or command line) listens on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import ROOT
from tests.stack.compose_files import command_flags, host_port, load_yaml, resolved_config

COLLECTOR = "otel-collector/config.yaml"
LOKI = "loki/config.yaml"
TEMPO = "tempo/config.yaml"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = resolved_config(tmp_path_factory.mktemp("compose-home"))["services"]
    return svcs


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


@pytest.fixture(scope="module")
def loki() -> dict[str, Any]:
    return load_yaml(LOKI)


@pytest.fixture(scope="module")
def tempo() -> dict[str, Any]:
    return load_yaml(TEMPO)


@pytest.fixture(scope="module")
def listening(
    services: dict[str, dict[str, Any]],
    collector: dict[str, Any],
    loki: dict[str, Any],
    tempo: dict[str, Any],
) -> dict[str, set[int]]:
    """Service name -> the ports it listens on, each taken from the config or command that sets it."""
    app_env = services["app"]["environment"]
    receivers = collector["receivers"]["otlp"]["protocols"]
    telemetry = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    prometheus_listen = [f for f in command_flags(services["prometheus"]) if f.startswith("--web.listen")]
    alertmanager_listen = [f for f in command_flags(services["alertmanager"]) if f.startswith("--web.listen")]
    assert not prometheus_listen and not alertmanager_listen, "defaults :9090 / :9093 assumed below"
    return {
        "app": {int(app_env["HTTP_PORT"]), int(app_env["GRPC_PORT"])},
        "upstream": {int(services["upstream"]["environment"]["UPSTREAM_PORT"])},
        "jobs": {int(services["jobs"]["environment"]["JOBS_PORT"])},
        "otel-collector": {
            host_port(receivers["grpc"]["endpoint"])[1],
            host_port(receivers["http"]["endpoint"])[1],
            int(telemetry["port"]),
            host_port(collector["extensions"]["health_check"]["endpoint"])[1],
        },
        "prometheus": {9090},
        "alertmanager": {9093},
        "alert-sink": {int(services["alert-sink"]["environment"]["ALERT_SINK_PORT"])},
        "loki": {int(loki["server"]["http_listen_port"])},
        "tempo": {
            int(tempo["server"]["http_listen_port"]),
            host_port(tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1],
        },
        "grafana": {3000},
        "redis": {6379},
    }


def assert_reaches(url: str, services: dict[str, Any], listening: dict[str, set[int]], what: str) -> None:
    host, port = host_port(url)
    assert host in services, f"{what}: {host!r} is not a compose service"
    assert port in listening[host], f"{what}: {host} does not listen on {port} ({sorted(listening[host])})"


# ---- config files say what they are and where they are mounted


@pytest.mark.parametrize(
    ("relative", "service", "target"),
    [
        (COLLECTOR, "otel-collector", "/etc/otelcol-contrib/config.yaml"),
        (LOKI, "loki", "/etc/loki/config.yaml"),
        (TEMPO, "tempo", "/etc/tempo/config.yaml"),
        ("alertmanager/alertmanager.yml", "alertmanager", "/etc/alertmanager/alertmanager.yml"),
    ],
)
def test_config_is_mounted_where_its_header_says(
    relative: str, service: str, target: str, services: dict[str, dict[str, Any]]
) -> None:
    header = (ROOT / relative).read_text().split("\n\n", 1)[0]
    assert header.startswith("#") and target in header, f"{relative}: header must name {target}"
    binds = {Path(v["source"]): v["target"] for v in services[service]["volumes"] if v["type"] == "bind"}
    file = ROOT / relative
    mounted = {t for s, t in binds.items() if s == file} | {
        str(Path(t) / file.relative_to(s)) for s, t in binds.items() if file.is_relative_to(s) and s != file
    }
    assert target in mounted, f"{relative} is not mounted at {target}: {binds}"
    config_flags = [f for f in command_flags(services[service]) if "config.file" in f or "--config=" in f]
    assert config_flags and config_flags[0].endswith("=" + target), config_flags


# ---- the collector


def test_collector_receives_otlp_on_grpc_and_http_on_all_interfaces(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_collector_pipelines_limit_memory_first_and_batch_before_export(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        assert pipeline["receivers"] == ["otlp"], name
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
        for exporter in pipeline["exporters"]:
            batch = collector["exporters"][exporter].get("sending_queue", {}).get("batch")
            assert batch is not None, f"{exporter}: batching is configured in its sending queue"
    limiter = collector["processors"]["memory_limiter"]
    assert 0 < limiter["spike_limit_mib"] < limiter["limit_mib"]


def test_collector_memory_limit_sits_below_the_container_limit(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    container = int(services["otel-collector"]["deploy"]["resources"]["limits"]["memory"])
    assert collector["processors"]["memory_limiter"]["limit_mib"] * 2**20 < container


def test_collector_sends_each_signal_to_its_backend(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    exporters = collector["exporters"]
    assert pipelines["metrics"]["exporters"] == ["otlp_http/prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/tempo"]
    assert pipelines["logs"]["exporters"] == ["otlp_http/loki"]
    assert urlparse(exporters["otlp_http/prometheus"]["endpoint"]).path == "/api/v1/otlp"
    assert urlparse(exporters["otlp_http/loki"]["endpoint"]).path == "/otlp"
    assert exporters["otlp_grpc/tempo"]["tls"]["insecure"] is True


def test_collector_debug_exporter_is_defined_but_off(collector: dict[str, Any]) -> None:
    assert "debug" in collector["exporters"]
    used = {e for p in collector["service"]["pipelines"].values() for e in p["exporters"]}
    assert "debug" not in used


def test_collector_exposes_its_own_metrics_and_health(collector: dict[str, Any]) -> None:
    assert collector["service"]["extensions"] == ["health_check"]
    assert collector["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    readers = collector["service"]["telemetry"]["metrics"]["readers"]
    prom = readers[0]["pull"]["exporter"]["prometheus"]
    assert (prom["host"], prom["port"]) == ("0.0.0.0", 8888)
    # Counters keep `_total`, as the names in docs/telemetry.md expect.
    assert prom["without_type_suffix"] is False


def test_collector_exporters_reach_services_on_ports_they_listen_on(
    collector: dict[str, Any], services: dict[str, dict[str, Any]], listening: dict[str, set[int]]
) -> None:
    for name, exporter in collector["exporters"].items():
        if "endpoint" in exporter:
            assert_reaches(exporter["endpoint"], services, listening, f"collector exporter {name}")
    prom_flags = command_flags(services["prometheus"])
    assert "--web.enable-otlp-receiver" in prom_flags, "the collector pushes to Prometheus's OTLP endpoint"
    assert host_port(collector["exporters"]["otlp_grpc/tempo"]["endpoint"]) == ("tempo", 4317)


def test_services_export_to_the_collector(
    services: dict[str, dict[str, Any]], listening: dict[str, set[int]], collector: dict[str, Any]
) -> None:
    grpc_port = host_port(collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1]
    for name in ("app", "upstream"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", grpc_port), name
        assert_reaches(env["OTEL_EXPORTER_OTLP_ENDPOINT"], services, listening, name)
        assert_reaches(env["REDIS_URL"], services, listening, f"{name} REDIS_URL")
        assert_reaches(env["UPSTREAM_URL"], services, listening, f"{name} UPSTREAM_URL")
    loadgen = services["loadgen"]["environment"]
    assert_reaches(loadgen["LOCUST_HOST"], services, listening, "loadgen LOCUST_HOST")
    assert_reaches(loadgen["GRPC_TARGET"], services, listening, "loadgen GRPC_TARGET")


def test_published_container_ports_are_ports_the_service_listens_on(
    services: dict[str, dict[str, Any]], listening: dict[str, set[int]]
) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert int(port["target"]) in listening[name], f"{name} publishes {port['target']}"


# ---- Loki


def test_loki_is_a_single_binary_on_the_filesystem_with_otlp_ingestion(
    loki: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert loki["auth_enabled"] is False
    assert loki["limits_config"]["allow_structured_metadata"] is True
    schema = loki["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    assert schema["index"]["period"] == "24h", "retention needs the 24h index period"
    assert loki["common"]["ring"]["kvstore"]["store"] == "inmemory"
    assert loki["common"]["replication_factor"] == 1
    labels = loki["distributor"]["otlp_config"]["default_resource_attributes_as_index_labels"]
    assert "service.name" in labels and "service.instance.id" not in labels


def test_loki_writes_only_into_its_volume(loki: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    volume = next(v["target"] for v in services["loki"]["volumes"] if v["type"] == "volume")
    paths = [
        loki["common"]["path_prefix"],
        *loki["common"]["storage"]["filesystem"].values(),
        loki["compactor"]["working_directory"],
    ]
    for path in paths:
        assert Path(path).is_relative_to(volume), f"{path} is outside the {volume} volume"
    assert loki["compactor"]["retention_enabled"] is True
    assert loki["limits_config"]["retention_period"]


# ---- Tempo


def test_tempo_generates_service_graph_and_span_metrics_into_prometheus(
    tempo: dict[str, Any], services: dict[str, dict[str, Any]], listening: dict[str, set[int]]
) -> None:
    processors = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"service-graphs", "span-metrics"} <= set(processors)
    remote_writes = tempo["metrics_generator"]["storage"]["remote_write"]
    assert remote_writes, "the generator must write somewhere"
    for target in remote_writes:
        assert urlparse(target["url"]).path == "/api/v1/write"
        assert target["send_exemplars"] is True
        assert_reaches(target["url"], services, listening, "tempo remote_write")
    assert "--web.enable-remote-write-receiver" in command_flags(services["prometheus"])
    assert "--enable-feature=exemplar-storage" in command_flags(services["prometheus"])


def test_tempo_keeps_everything_in_its_volume(
    tempo: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    volume = next(v["target"] for v in services["tempo"]["volumes"] if v["type"] == "volume")
    trace = tempo["storage"]["trace"]
    assert trace["backend"] == "local"
    for path in (trace["wal"]["path"], trace["local"]["path"], tempo["metrics_generator"]["storage"]["path"]):
        assert Path(path).is_relative_to(volume), f"{path} is outside the {volume} volume"


def test_tempo_receives_otlp_grpc_from_the_collector(tempo: dict[str, Any]) -> None:
    receivers = tempo["distributor"]["receivers"]
    assert set(receivers) == {"otlp"}, "only the receiver the collector uses"
    assert receivers["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"


# ---- the other helpers' files, once present: their addresses must line up with compose too


def test_prometheus_scrape_and_alerting_targets_are_compose_services(
    services: dict[str, dict[str, Any]], listening: dict[str, set[int]]
) -> None:
    path = ROOT / "prometheus" / "prometheus.yml"
    if not path.exists():
        pytest.skip("prometheus/prometheus.yml not written yet")
    config = yaml.safe_load(path.read_text())
    targets = [
        (job["job_name"], target)
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    assert targets, "Prometheus scrapes at least the service and the collector"
    for job, target in targets:
        if host_port(target)[0] in {"localhost", "127.0.0.1"}:
            continue  # Prometheus scraping itself
        assert_reaches(target, services, listening, f"scrape job {job}")
    for am in config.get("alerting", {}).get("alertmanagers", []):
        for static in am.get("static_configs", []):
            for target in static["targets"]:
                assert_reaches(target, services, listening, "alertmanager target")
    scraped = {host_port(t)[0] for _, t in targets}
    assert {"app", "otel-collector"} <= scraped


def test_grafana_datasource_urls_are_compose_services(
    services: dict[str, dict[str, Any]], listening: dict[str, set[int]]
) -> None:
    folder = ROOT / "grafana" / "provisioning" / "datasources"
    files = sorted(folder.glob("*.y*ml")) if folder.exists() else []
    if not files:
        pytest.skip("grafana/provisioning/datasources not written yet")
    uids = {}
    for file in files:
        for ds in yaml.safe_load(file.read_text()).get("datasources", []):
            uids[ds["uid"]] = ds
            assert_reaches(ds["url"], services, listening, f"datasource {ds['uid']}")
    assert {"prometheus", "loki", "tempo", "alertmanager"} <= uids.keys()


def test_every_exemplar_label_the_stack_writes_opens_a_trace(tempo: dict[str, Any]) -> None:
    """OTLP exemplars (the service's histograms) carry `trace_id`; Tempo's metrics-generator writes the
    label its overrides name (default `traceID`). The Prometheus datasource must link each to Tempo."""
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())
    prometheus = next(ds for ds in datasources["datasources"] if ds["uid"] == "prometheus")
    linked = {
        d["name"]
        for d in prometheus["jsonData"]["exemplarTraceIdDestinations"]
        if d["datasourceUid"] == "tempo"
    }
    generator_label = tempo["overrides"]["defaults"]["metrics_generator"].get(
        "trace_id_label_name", "traceID"
    )
    assert {"trace_id", generator_label} <= linked
