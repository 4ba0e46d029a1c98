"""Every kustomization renders, and every object it renders is valid Kubernetes, offline.

Validation uses kubernetes-validate's bundled OpenAPI schemas of one pinned Kubernetes version, in strict
mode (an unknown or misspelt field fails, as `kubectl apply --validate=strict` would). Objects of CRD
kinds (kube-prometheus-stack's PrometheusRule and PodMonitor) have no schema there; test_generated.py
checks the rules, and this module checks that nothing else slips through without a schema.
"""

from __future__ import annotations

import copy

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.kubernetes.manifests import CRD_KINDS, KUSTOMIZATIONS, OVERLAYS, Manifest, render

# The oldest Kubernetes these manifests target: kubectl 1.32 renders them (the machine image's),
# and they use the preStop `sleep` action (beta and on by default since 1.30).
KUBERNETES_VERSION = "1.32.0"


def validate(obj: Manifest) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_there_are_a_dev_and_a_production_overlay() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(kustomization: str) -> None:
    objects = render(kustomization)
    assert objects, f"{kustomization} renders nothing"
    errors = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as exc:
            errors.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(
                f"{obj['kind']} ({obj['apiVersion']}) has no schema in Kubernetes {KUBERNETES_VERSION}"
            )
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_has_what_the_service_needs(overlay: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(f"overlays/{overlay}")}
    for expected in [
        ("Namespace", None),
        ("Deployment", "api"),
        ("Deployment", "upstream"),
        ("Deployment", "otel-collector"),
        ("Service", "api"),
        ("Service", "api-grpc"),
        ("Service", "upstream"),
        ("Service", "otel-collector"),
        ("PodDisruptionBudget", "api"),
        ("HorizontalPodAutoscaler", "api"),
        ("NetworkPolicy", "default-deny"),
        ("ConfigMap", None),
    ]:
        kind, name = expected
        assert any(k == kind and (name is None or n.startswith(name)) for k, n in kinds), (overlay, expected)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lands_in_the_overlay_namespace(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]


def test_only_dev_runs_redis() -> None:
    for overlay in OVERLAYS:
        redis = [o for o in render(f"overlays/{overlay}") if o["metadata"]["name"] == "redis"]
        assert bool(redis) == (overlay == "dev"), overlay


def test_the_validation_is_strict_enough_to_catch_a_typo() -> None:
    """Guards the guard: a misspelt field and a wrong type must fail, or the test above proves nothing."""
    deployment = next(o for o in render("overlays/dev") if o["kind"] == "Deployment")
    validate(deployment)
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(misspelt)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)
