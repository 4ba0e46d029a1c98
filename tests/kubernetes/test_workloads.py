"""The rendered workloads agree with the service: its routes, ports, settings, shutdown and resources.

Facts come from the code, not from lists kept here: probe paths from the real Flask apps' url maps,
ports and timeouts from the rendered ConfigMap or else the Settings defaults, setting names from the
Settings model.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

import pytest

from app.settings import load_settings
from app.telemetry import environment
from tests.kubernetes.manifests import (
    KUSTOMIZATIONS,
    OVERLAYS,
    Manifest,
    container_env,
    dotenv,
    get_routes,
    named,
    of_kind,
    pod_templates,
    render,
    secret_env_names,
    setting,
    settings_fields,
)

SECRET_SETTINGS = {"AUTH_SIGNING_KEY", "CRYPTO_KEYS", "CRYPTO_SIGNING_KEY"}
# The drain and the telemetry flush share the graceful timeout (app/worker.py, Worker.stop: the flush
# gets what is left, at least 0.5 s and at most 5 s); 5 s for that flush and 5 s more for the master's
# exit and the kubelet.
SHUTDOWN_MARGIN_S = 5.0 + 5.0
# Measured (docs/kubernetes.md, "Resources"): PSS of the gunicorn master, and of one worker with its
# forkserver, pool process and resource tracker, after load.
MASTER_MIB = 40
PER_WORKER_MIB = 100


def app_containers(objects: tuple[Manifest, ...]) -> list[tuple[str, Manifest, Manifest, Manifest]]:
    """(role, workload, pod spec, container) for every container running `python -m app <role>`."""
    found = []
    for workload, pod in pod_templates(objects):
        for container in pod["containers"]:
            args = container.get("command", []) + container.get("args", [])
            if args[:3] == ["python", "-m", "app"]:
                found.append((args[3], workload, pod, container))
    return found


def overlay_objects() -> list[tuple[str, tuple[Manifest, ...]]]:
    return [(name, render(f"overlays/{name}")) for name in OVERLAYS]


def port_number(container: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def parse_quantity(value: str) -> float:
    """CPU in cores, memory in MiB."""
    units = {"m": 1e-3, "Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi)?", str(value))
    assert match, value
    return float(match[1]) * units.get(match[2] or "", 1.0)


def prestop_seconds(container: Manifest) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    assert command[:1] == ["sleep"], f"preStop must be nothing or a sleep, got {pre_stop}"
    return float(command[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_role_is_deployed(overlay: str) -> None:
    roles = {role for role, *_ in app_containers(render(f"overlays/{overlay}"))}
    assert roles == {"serve", "jobs", "upstream"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_routes_and_ports_the_service_has(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    for role, _, _, container in app_containers(objects):
        env = container_env(objects, container)
        routes = get_routes({"serve": "api"}.get(role, role))
        http_port = setting(env, {"serve": "http_port", "jobs": "jobs_port"}.get(role, "upstream_port"))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]["httpGet"]
            assert probe["path"] in routes, (role, kind, probe["path"], sorted(routes))
            assert port_number(container, probe["port"]) == http_port, (role, kind)
        if role == "serve":
            # Liveness must not depend on Redis or the drain: a restart would not fix either.
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert port_number(container, "grpc") == setting(env, "grpc_port")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_fits_in_the_grace_period(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    for role, _, pod, container in app_containers(objects):
        env = container_env(objects, container)
        needed = (
            prestop_seconds(container)
            + setting(env, "drain_delay_s")
            + setting(env, "graceful_timeout_s")
            + SHUTDOWN_MARGIN_S
        )
        grace = pod["terminationGracePeriodSeconds"]
        assert needed <= grace, f"{role}: preStop + drain + graceful + margin = {needed} s > {grace} s"


def test_the_api_relies_on_its_own_drain_delay_not_a_prestop() -> None:
    """docs/kubernetes.md: the service keeps serving DRAIN_DELAY_S after SIGTERM; a sleep would double it."""
    for _, objects in overlay_objects():
        for role, _, _, container in app_containers(objects):
            if role == "serve":
                assert prestop_seconds(container) == 0
                assert setting(container_env(objects, container), "drain_delay_s") > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_configuration_is_one_the_service_accepts(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    for role, _, _, container in app_containers(objects):
        env = container_env(objects, container)
        for source in container["envFrom"]:
            if "configMapRef" in source:
                data = named(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
                unknown = {k for k in data if k not in settings_fields() and not k.startswith("OTEL_")}
                assert not unknown, f"{role}: ConfigMap keys that are no setting: {sorted(unknown)}"
        # Set beside the volume it names; not a Settings field, but read by app.gunicorn_server.
        extra = {v["name"] for v in container.get("env", [])} - settings_fields()
        assert extra <= {"PROMETHEUS_MULTIPROC_DIR"}, f"{role}: unknown variables {sorted(extra)}"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts, f"{role}: the metrics directory is a volume"
        assert not SECRET_SETTINGS & env.keys(), f"{role}: secrets belong in the Secret"
        assert secret_env_names(container) == ["platform-secrets"], role
        # Start-up validation, as `python -m app` runs it (secrets and downward-API values stand in).
        values = {k: v for k, v in env.items() if v is not None and not k.startswith("OTEL_")}
        values |= dict.fromkeys(SECRET_SETTINGS, "")
        values |= {
            "AUTH_SIGNING_KEY": "A" * 43,
            "CRYPTO_SIGNING_KEY": "B" * 43,
            "CRYPTO_KEYS": "k1:" + "C" * 43,
        }
        settings = load_settings(values)
        assert settings.app_env != "dev", "dev mode writes key files and differs per pod"
        telemetry = {k: str(v) for k, v in env.items() if v is not None}
        assert environment.problems(telemetry) == [], role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_concurrency_follows_the_cpu_limit(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    for role, _, pod, container in app_containers(objects):
        if role != "serve":
            continue
        (var,) = [v for v in container["env"] if v["name"] == "WEB_CONCURRENCY"]
        ref = var["valueFrom"]["resourceFieldRef"]
        assert ref == {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
        assert (
            "WEB_CONCURRENCY"
            not in named(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
        )
        # The downward API rounds the limit up to whole cores: that many workers, and memory for them.
        workers = math.ceil(parse_quantity(container["resources"]["limits"]["cpu"]))
        tmpfs = sum(parse_quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v)
        needed = MASTER_MIB + PER_WORKER_MIB * workers + tmpfs
        memory = parse_quantity(container["resources"]["limits"]["memory"])
        assert memory >= needed, f"{overlay}: {workers} workers need {needed} MiB, limit is {memory} MiB"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_container_is_locked_down_and_bounded(kustomization: str) -> None:
    objects = render(kustomization)
    bound_accounts = {s["name"] for rb in of_kind(objects, "RoleBinding") for s in rb["subjects"]}
    for workload, pod in pod_templates(objects):
        name = workload["metadata"]["name"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        # A token only where the pod talks to the Kubernetes API (the collector's k8s_attributes).
        needs_token = pod.get("serviceAccountName") in bound_accounts
        assert pod.get("automountServiceAccountToken", True) is needs_token, name
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, name
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources[kind].keys(), (name, kind)
            # The memory limit is what the kernel enforces: a request above it would never be met.
            assert parse_quantity(resources["requests"]["memory"]) <= parse_quantity(
                resources["limits"]["memory"]
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_storage_is_only_where_the_service_writes(overlay: str) -> None:
    """Read-only root; tmpfs for PROMETHEUS_MULTIPROC_DIR and /tmp (gunicorn heartbeats, forkserver)."""
    objects = render(f"overlays/{overlay}")
    for role, _, pod, container in app_containers(objects):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        env = container_env(objects, container)
        assert set(mounts) == {env["PROMETHEUS_MULTIPROC_DIR"], "/tmp"}, role
        for path, volume in mounts.items():
            assert volume["emptyDir"]["medium"] == "Memory", (role, path)
            assert "sizeLimit" in volume["emptyDir"], (role, path)


def test_no_secret_is_committed() -> None:
    for kustomization in KUSTOMIZATIONS:
        assert not of_kind(render(kustomization), "Secret"), kustomization


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_images_are_the_versions_pinned_in_dotenv(kustomization: str) -> None:
    env = dotenv()
    pinned = {
        env["OTELCOL_IMAGE"].rsplit(":", 1)[0]: env["OTELCOL_IMAGE"],
        env["REDIS_IMAGE"].rsplit(":", 1)[0]: env["REDIS_IMAGE"],
        env["PYTHON_IMAGE"].rsplit(":", 1)[0]: env["PYTHON_IMAGE"],
    }
    for _, pod in pod_templates(render(kustomization)):
        for container in pod["containers"]:
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            if repository.endswith("platform-app"):
                assert tag == env["APP_VERSION"], image
            else:
                assert pinned.get(repository) == image, f"{image} is not pinned in .env"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_ports_that_exist(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    pods = [(w["spec"]["template"]["metadata"]["labels"], pod) for w, pod in pod_templates(objects)]
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        selected = [pod for labels, pod in pods if selector.items() <= labels.items()]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            for pod in selected:
                assert any(port_number(c, port["targetPort"]) for c in pod["containers"])
    headless = named(objects, "Service", "api-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_and_disruption_budget_cover_the_api(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    api = named(objects, "Deployment", "api")
    hpa = named(objects, "HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert 1 <= hpa["spec"]["minReplicas"] <= api["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = named(objects, "PodDisruptionBudget", "api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_what_the_service_dials(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    policies = of_kind(objects, "NetworkPolicy")
    pods = [w["spec"]["template"]["metadata"]["labels"] for w, _ in pod_templates(objects)]
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(selector.items() <= labels.items() for labels in pods), policy["metadata"]["name"]
    for role, workload, _, container in app_containers(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        allowed = {
            port["port"]
            for policy in policies
            if policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
            for rule in policy["spec"].get("egress", [])
            for port in rule.get("ports", [])
        }
        env = container_env(objects, container)
        own = {"serve": ["UPSTREAM_URL", "REDIS_URL"], "jobs": ["REDIS_URL"]}.get(role, [])
        dials = ["OTEL_EXPORTER_OTLP_ENDPOINT", *own]
        for name in dials:
            url = urlsplit(env[name] or "")
            assert url.port in allowed, f"{role} dials {name}={env[name]}; egress allows {sorted(allowed)}"
