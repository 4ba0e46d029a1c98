"""The platform distro: registered by entry point, only workers instrumented, both start commands alike.

Each case runs in a fresh interpreter: OpenTelemetry's global providers are set once per process, and
`opentelemetry-instrument` works by starting one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent

# What a probe script reports about the process it runs in.
REPORT = """
import json, os, flask, grpc
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider
from app.telemetry import distro

def report():
    provider = trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    return {
        "pid": os.getpid(),
        "sdk": isinstance(provider, TracerProvider),
        "instance_id": resource.attributes.get("service.instance.id") if resource else None,
        "flask_patched": flask.Flask.wsgi_app.__name__ != "wsgi_app",
        "grpc_patched": grpc.aio.server.__module__ != "grpc.aio._server",
        "meter_provider": type(metrics.get_meter_provider()).__name__,
        "problems": distro.prefork_problems(),
    }
"""


def probe(code: str, *, instrument: bool = False, **env: str) -> Any:
    """Run REPORT + `code` (which prints one JSON line last) in a new interpreter; its last line parsed."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))}
    environ.update({"PYTHONPATH": str(ROOT), **env})
    command = [sys.executable, "-c", REPORT + textwrap.dedent(code)]
    if instrument:
        command = [str(BIN / "opentelemetry-instrument"), *command]
    done = subprocess.run(command, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_distro_and_its_parts_are_registered_by_entry_point() -> None:
    def names(group: str) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=group)}

    assert names("opentelemetry_distro")["platform"] == "app.telemetry.distro:PlatformDistro"
    assert names("opentelemetry_configurator")["platform"] == "app.telemetry.distro:PlatformConfigurator"
    assert (
        names("opentelemetry_instrumentor")["platform_flask"]
        == "app.telemetry.flask_instrumentation:PlatformFlaskInstrumentor"
    )
    assert (
        names("opentelemetry_instrumentor")["platform_grpc_aio_server"]
        == "app.telemetry.grpc_instrumentation:PlatformGrpcAioServerInstrumentor"
    )
    assert (
        names("opentelemetry_metrics_exporter")["prometheus_multiprocess"]
        == "app.telemetry.prometheus_bridge:PrometheusMultiprocessMetricReader"
    )
    # The stock distro is installed too (the configurator builds on it): the names choose.
    assert "distro" in names("opentelemetry_distro")


def test_start_worker_sets_up_the_sdk_and_the_instrumentations() -> None:
    result = probe(
        """
        before = report()
        telemetry = distro.start_worker()
        after = report()
        print(json.dumps({"before": before, "after": after, "instance_id": telemetry.instance_id}))
        """
    )
    before, after = result["before"], result["after"]
    assert not before["sdk"] and not before["flask_patched"] and not before["grpc_patched"]
    assert after["sdk"] and after["flask_patched"] and after["grpc_patched"]
    assert after["meter_provider"] == "MeterProvider"
    assert result["instance_id"] == after["instance_id"]


def test_opentelemetry_instrument_leaves_the_forking_process_untouched_and_each_worker_its_own() -> None:
    result = probe(
        """
        parent = report()
        children = []
        for _ in range(2):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                telemetry = distro.start_worker()
                os.write(write, json.dumps(report()).encode())
                telemetry.shutdown(2.0)
                os._exit(0)
            os.close(write)
            children.append(json.loads(os.fdopen(read).read()))
            os.waitpid(pid, 0)
        print(json.dumps({"parent": parent, "children": children, "after": report()}))
        """,
        instrument=True,
        OTEL_PYTHON_DISTRO="platform",
        OTEL_PYTHON_CONFIGURATOR="platform",
    )
    parent, children = result["parent"], result["children"]
    # The sitecustomize of opentelemetry-instrument ran this distro in the parent: defaults, nothing else.
    assert not parent["sdk"] and not parent["flask_patched"] and not parent["grpc_patched"]
    assert parent["problems"] == [] and result["after"] == parent
    assert all(c["sdk"] and c["flask_patched"] and c["grpc_patched"] for c in children)
    ids = {c["instance_id"] for c in children}
    assert len(ids) == 2 and None not in ids


def test_another_distro_in_the_forking_process_is_reported_before_fork() -> None:
    result = probe(
        "print(json.dumps(report()))",
        instrument=True,
        OTEL_PYTHON_DISTRO="distro",
        OTEL_PYTHON_CONFIGURATOR="configurator",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    assert result["sdk"]  # the stock distro set up the SDK in the process that would fork
    assert any("OTEL_PYTHON_DISTRO=platform" in p for p in result["problems"])


@pytest.mark.parametrize(
    ("disabled", "ours", "contrib"),
    [
        ("", True, False),
        ("platform_flask", False, True),
        ("flask", False, False),
        ("redis, flask", False, False),
    ],
)
def test_disabled_instrumentations_choose_the_flask_instrumentation(
    disabled: str, ours: bool, contrib: bool
) -> None:
    result = probe(
        """
        distro.start_worker()
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from app.telemetry.flask_instrumentation import PlatformFlaskInstrumentor
        print(json.dumps({
            "ours": PlatformFlaskInstrumentor().is_instrumented_by_opentelemetry,
            "contrib": FlaskInstrumentor().is_instrumented_by_opentelemetry,
        }))
        """,
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled,
    )
    assert (result["ours"], result["contrib"]) == (ours, contrib)


@pytest.mark.parametrize(
    ("disabled", "ours", "contrib"),
    [
        ("", True, False),
        ("platform_grpc_aio_server", False, True),
        ("grpc_aio_server", False, False),
    ],
)
def test_disabled_instrumentations_choose_the_grpc_server_instrumentation(
    disabled: str, ours: bool, contrib: bool
) -> None:
    result = probe(
        """
        distro.start_worker()
        print(json.dumps({"patched_by": grpc.aio.server.__module__}))
        """,
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled,
    )
    patched_by = result["patched_by"]
    assert (patched_by == "app.telemetry.grpc_instrumentation", patched_by.startswith("opentelemetry.")) == (
        ours,
        contrib,
    )


def test_sdk_disabled_leaves_the_worker_uninstrumented() -> None:
    result = probe(
        """
        telemetry = distro.start_worker()
        print(json.dumps({**report(), "instance_id": telemetry.instance_id}))
        """,
        OTEL_SDK_DISABLED="true",
    )
    assert not result["sdk"] and not result["flask_patched"]
    assert result["instance_id"]  # still one id per worker, for X-Instance-Id


def test_process_metrics_are_exactly_the_contracts(tmp_path: Path) -> None:
    result = probe(
        """
        from app.telemetry.prometheus_bridge import render_metrics
        distro.start_worker()
        metrics.get_meter_provider().force_flush()
        text = render_metrics()[0].decode()
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        print(json.dumps(sorted(n for n in names if n.startswith(("process_", "cpython_", "system_")))))
        """,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    assert result == [
        "cpython_gc_collections_total",
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "process_thread_count",
    ]


def test_a_second_start_in_one_process_is_refused() -> None:
    result = probe(
        """
        distro.start_worker()
        try:
            distro.start_worker()
        except RuntimeError as exc:
            print(json.dumps({"error": str(exc)}))
        """
    )
    assert "once per worker" in result["error"]


def test_contrib_flask_instrumentation_covers_the_service_app_when_chosen(tmp_path: Path) -> None:
    """The `stock` choice must really instrument the service's own app, even with app.http imported first
    (as in a gunicorn master) and contrib's instrumentor replacing flask.Flask only in the worker."""
    result = probe(
        """
        import app.http  # imported before telemetry starts, as gunicorn's master does
        distro.start_worker()
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        spans = InMemorySpanExporter()
        trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(spans))
        from app.settings import load_settings
        from app.worker import build_services
        settings = load_settings({"APP_ENV": "dev", "DEV_SECRETS_FILE": os.environ["SECRETS"]})
        service_app = app.http.create_app(settings, build_services(settings), instance_id="probe")
        service_app.test_client().get("/openapi.json")
        print(json.dumps([s.instrumentation_scope.name for s in spans.get_finished_spans()]))
        """,
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="platform_flask",
        OTEL_TRACES_SAMPLER="always_on",
        SECRETS=str(tmp_path / "dev-secrets.json"),
    )
    assert result == ["opentelemetry.instrumentation.flask"]
