"""The Helm values, the collector gateway and the docs agree with each other and with compose.

Charts are not rendered here (no chart repository is reachable offline, and no helm binary is
installed): these tests check what can be checked without them. Every values file parses and names the
chart and version helmfile.yaml pins; docs/kubernetes.md installs exactly those; images are the .env
versions; every address the collector, Grafana, Tempo and Alertmanager use is a Service these releases
or the monitoring kustomization create; and the telemetry keeps compose's pipelines and job/instance.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT
from tests.kubernetes.manifests import DEPLOY, dotenv, load_yaml, named, render

HELM = DEPLOY / "helm"
HELMFILE = load_yaml(HELM / "helmfile.yaml")
RELEASES = {r["name"]: r for r in HELMFILE["releases"]}
DOCS = (ROOT / "docs" / "kubernetes.md").read_text()
OBSERVABILITY = "observability"


def values(release: str) -> Any:
    (path,) = RELEASES[release]["values"]
    return load_yaml(HELM / path)


def test_every_release_is_pinned_and_its_values_file_says_so() -> None:
    repositories = {r["name"] for r in HELMFILE["repositories"]}
    assert set(RELEASES) == {"kps", "loki", "tempo", "grafana"}
    for name, release in RELEASES.items():
        assert release["namespace"] == OBSERVABILITY, name
        assert re.fullmatch(r"\d+\.\d+\.\d+", release["version"]), (name, release["version"])
        assert release["chart"].split("/")[0] in repositories, name
        (path,) = release["values"]
        first_line = (HELM / path).read_text().splitlines()[0]
        expected = f"# Chart {release['chart']}, version {release['version']} (helmfile.yaml)"
        assert first_line.startswith(expected), (path, first_line)
        assert isinstance(load_yaml(HELM / path), dict), path


def test_the_docs_install_exactly_the_pinned_charts() -> None:
    installs = re.findall(
        r"helm upgrade --install (\S+) (\S+) --version (\S+) .*?-f deploy/kubernetes/helm/(\S+)", DOCS
    )
    assert {name: (chart, version, [path]) for name, chart, version, path in installs} == {
        name: (r["chart"], r["version"], r["values"]) for name, r in RELEASES.items()
    }
    for repository in HELMFILE["repositories"]:
        assert f"helm repo add {repository['name']} {repository['url']}" in DOCS


@pytest.mark.parametrize(
    ("release", "path", "dotenv_key"),
    [
        ("kps", ["prometheus", "prometheusSpec", "image"], "PROMETHEUS_IMAGE"),
        ("kps", ["alertmanager", "alertmanagerSpec", "image"], "ALERTMANAGER_IMAGE"),
        ("loki", ["loki", "image"], "LOKI_IMAGE"),
        ("tempo", ["tempo"], "TEMPO_IMAGE"),
        ("grafana", ["image"], "GRAFANA_IMAGE"),
    ],
)
def test_images_are_the_versions_pinned_in_dotenv(release: str, path: list[str], dotenv_key: str) -> None:
    image = values(release)
    for key in path:
        image = image[key]
    assert f"{image['repository']}:{image['tag']}" == dotenv()[dotenv_key]
    assert image["registry"] == "docker.io"


def service_address(url: str) -> tuple[str, int]:
    """(service, port) of an in-cluster URL or host:port, as seen from the namespace `observability`."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = parts.hostname or ""
    name, _, namespace = host.partition(".")
    assert namespace in {"", f"{OBSERVABILITY}.svc"}, url
    assert parts.port is not None, url
    return name, parts.port


# The Services the releases create (fullnameOverride or release name) and the port each listens on.
HELM_SERVICES = {
    ("kps-prometheus", 9090),
    ("kps-alertmanager", 9093),
    ("loki", 3100),
    ("tempo", 3200),
    ("tempo", 4317),
}


def test_release_names_give_the_service_names_used_everywhere() -> None:
    assert values("kps")["fullnameOverride"] == "kps"
    assert values("tempo")["fullnameOverride"] == "tempo"
    assert values("grafana")["fullnameOverride"] == "grafana"
    assert "loki" in RELEASES  # the chart names its monolithic Service after the release


def test_collector_exports_to_the_releases_and_keeps_compose_pipelines() -> None:
    config = load_yaml(DEPLOY / "base" / "otel-collector-config.yaml")
    compose = load_yaml(ROOT / "otel-collector" / "config.yaml")
    exporters = config["exporters"]
    assert service_address(exporters["otlp_http/prometheus"]["endpoint"]) in HELM_SERVICES
    assert urlsplit(exporters["otlp_http/prometheus"]["endpoint"]).path == "/api/v1/otlp"
    assert service_address(exporters["otlp_grpc/tempo"]["endpoint"]) == ("tempo", 4317)
    assert service_address(exporters["otlp_http/loki"]["endpoint"]) in HELM_SERVICES
    assert urlsplit(exporters["otlp_http/loki"]["endpoint"]).path == "/otlp"
    for signal, pipeline in compose["service"]["pipelines"].items():
        ours = config["service"]["pipelines"][signal]
        assert ours["receivers"] == pipeline["receivers"]
        assert ours["exporters"] == pipeline["exporters"]
        assert ours["processors"] == [*pipeline["processors"], "k8s_attributes"]
    assert config["receivers"] == compose["receivers"]


def test_collector_keeps_job_and_instance_and_may_read_what_it_needs() -> None:
    """job = service.namespace/service.name and instance = service.instance.id come through untouched."""
    config = load_yaml(DEPLOY / "base" / "otel-collector-config.yaml")
    assert set(config["processors"]) == {"memory_limiter", "k8s_attributes"}
    k8s = config["processors"]["k8s_attributes"]
    assert all(key.startswith("k8s.") for key in k8s["extract"]["metadata"])
    assert {"k8s.pod.name", "k8s.namespace.name", "k8s.node.name"} <= set(k8s["extract"]["metadata"])
    assert k8s["filter"]["namespace"] == "${env:K8S_NAMESPACE}"

    for overlay in ("dev", "production"):
        objects = render(f"overlays/{overlay}")
        pod = named(objects, "Deployment", "otel-collector")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {v["name"]: v for v in container["env"]}
        assert env["K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        role = named(objects, "Role", "otel-collector")
        granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
        assert granted == {("", "pods"), ("apps", "replicasets")}
        assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in role["rules"])
        binding = named(objects, "RoleBinding", "otel-collector")
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_prometheus_receives_what_compose_enables() -> None:
    spec = values("kps")["prometheus"]["prometheusSpec"]
    assert spec["enableOTLPReceiver"] is True
    assert spec["enableRemoteWriteReceiver"] is True
    assert "exemplar-storage" in spec["enableFeatures"]
    compose = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    assert spec["otlp"]["translationStrategy"] == compose["otlp"]["translation_strategy"]
    assert set(compose["otlp"]["promote_resource_attributes"]) <= set(
        spec["otlp"]["promoteResourceAttributes"]
    )
    # Selects our PrometheusRules and PodMonitors, which carry no `release` label.
    for key in ("ruleSelectorNilUsesHelmValues", "podMonitorSelectorNilUsesHelmValues"):
        assert spec[key] is False
    assert values("kps")["grafana"]["enabled"] is False


def test_tempo_writes_metrics_to_prometheus() -> None:
    generator = values("tempo")["tempo"]["metricsGenerator"]
    assert generator["enabled"] is True
    (remote,) = generator["storage"]["remote_write"]
    assert service_address(remote["url"]) in HELM_SERVICES
    assert urlsplit(remote["url"]).path == "/api/v1/write"
    assert remote["send_exemplars"] is True
    compose = load_yaml(ROOT / "tempo" / "config.yaml")
    assert generator["processor"] == compose["metrics_generator"]["processor"]
    overrides = values("tempo")["tempo"]["overrides"]["defaults"]
    assert overrides == compose["overrides"]["defaults"]


def test_loki_indexes_what_compose_indexes() -> None:
    loki = values("loki")["loki"]
    compose = load_yaml(ROOT / "loki" / "config.yaml")
    ours = loki["distributor"]["otlp_config"]["default_resource_attributes_as_index_labels"]
    theirs = compose["distributor"]["otlp_config"]["default_resource_attributes_as_index_labels"]
    assert set(theirs) <= set(ours)
    assert "k8s.pod.name" not in ours  # churns with every rollout: structured metadata, not an index label
    assert loki["limits_config"]["allow_structured_metadata"] is True


def test_alertmanager_routes_like_compose_to_the_in_cluster_alert_sink() -> None:
    ours = values("kps")["alertmanager"]["config"]
    compose = load_yaml(ROOT / "alertmanager" / "alertmanager.yml")
    # Keys set to null are Helm's way to delete a default (see the values file); they are not config.
    assert {k: v for k, v in ours["route"].items() if v is not None} == compose["route"]
    assert ours["inhibit_rules"] == compose["inhibit_rules"]
    (receiver,) = ours["receivers"]
    (theirs,) = compose["receivers"]
    (hook,) = receiver["webhook_configs"]
    (compose_hook,) = theirs["webhook_configs"]
    assert {k: v for k, v in hook.items() if k != "url"} == {
        k: v for k, v in compose_hook.items() if k != "url"
    }
    name, port = service_address(hook["url"])
    service = named(render("monitoring"), "Service", name)
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    assert urlsplit(hook["url"]).path == urlsplit(compose_hook["url"]).path


def test_grafana_sidecars_pick_up_the_generated_config_maps() -> None:
    sidecar = values("grafana")["sidecar"]
    labelled: dict[str, set[str]] = {"grafana_dashboard": set(), "grafana_datasource": set()}
    for obj in render("monitoring"):
        for label in labelled:
            if label in obj["metadata"].get("labels", {}):
                labelled[label].add(obj["metadata"]["labels"][label])
    assert labelled["grafana_dashboard"] == {sidecar["dashboards"]["labelValue"]}
    assert labelled["grafana_datasource"] == {sidecar["datasources"]["labelValue"]}
    assert sidecar["dashboards"]["label"] == "grafana_dashboard"
    assert sidecar["datasources"]["label"] == "grafana_datasource"
    assert sidecar["dashboards"]["folderAnnotation"] == "grafana_folder"
    assert sidecar["dashboards"]["enabled"] and sidecar["datasources"]["enabled"]
