"""Render deploy/kubernetes with kubectl's kustomize and read what the tests check, offline.

kubectl (with kustomize built in) renders; nothing here talks to a cluster.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from app.settings import Settings, b64encode
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
# Everything `kubectl apply -k` is pointed at in docs/kubernetes.md.
KUSTOMIZATIONS = [f"overlays/{name}" for name in OVERLAYS] + ["monitoring"]
# Kinds that come from CRDs (kube-prometheus-stack's), which the Kubernetes schemas do not describe.
CRD_KINDS = {"PrometheusRule", "PodMonitor"}

Manifest = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl (kustomize built in) is not on PATH; the machine image carries it")
    return path


@functools.cache
def render(kustomization: str) -> tuple[Manifest, ...]:
    """`kubectl kustomize deploy/kubernetes/<kustomization>`, parsed; cached for the session."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates(objects: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, pod spec) for every Deployment, StatefulSet, DaemonSet and Job."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj, obj["spec"]["template"]["spec"]


def container_env(objects: tuple[Manifest, ...], container: Manifest) -> dict[str, str | None]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then `env`.

    Values from Secrets and from the downward API are None (known to exist, value not in the manifests).
    """
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def secret_env_names(container: Manifest) -> list[str]:
    return [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]


def settings_fields() -> set[str]:
    """Every environment variable the service reads as a setting (Settings fields, upper case)."""
    return {name.upper() for name in Settings.model_fields}


def setting(env: dict[str, str | None], name: str) -> float:
    """A numeric setting as the service would see it: the container's value, else the Settings default."""
    value = env.get(name.upper())
    if value is None:
        default = Settings.model_fields[name].default
        assert isinstance(default, int | float), name
        return float(default)
    return float(value)


def settings_for_tests() -> Settings:
    key = b64encode(os.urandom(32))
    return Settings(app_env="test", auth_signing_key=key, crypto_keys=f"k1:{key}", crypto_signing_key=key)


@functools.cache
def get_routes(role: str) -> frozenset[str]:
    """GET routes of the real Flask apps (`serve` -> api, `jobs`, `upstream`), built as a worker builds them;
    the services are wired but never started (nothing connects), and telemetry is the distro's business."""
    from app.http import create_app, create_probe_app
    from app.upstream import create_upstream_app
    from app.worker import build_services

    settings = settings_for_tests()
    if role == "api":
        flask_app: Flask = create_app(settings, build_services(settings), instance_id="k8s")
    elif role == "jobs":
        flask_app = create_probe_app(build_services(settings))
    else:
        flask_app = create_upstream_app(settings)
    return frozenset(r.rule for r in flask_app.url_map.iter_rules() if r.methods and "GET" in r.methods)


def dotenv() -> dict[str, str]:
    """The compose stack's .env: image versions."""
    values = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
