"""The OTEL_* defaults of the platform distro, and the check that refuses a bad OTEL_* value at start.

The distro sets defaults the way vendor distros do: only where a variable is unset, so every standard
OpenTelemetry variable still wins. What the defaults amount to (docs/telemetry.md, "Configuration"):

- stable HTTP semantic conventions (`http.server.request.duration` in seconds);
- traces sampled parent-based at 10% of the traces that start here;
- OTLP export of a signal only when an OTLP endpoint is configured (no endpoint: nothing is exported or
  queued); metrics also to the `/metrics` files whenever PROMETHEUS_MULTIPROC_DIR is set;
- OTLP log records from the logging instrumentation only when logs are exported;
- the SDK's own metrics (queue sizes, exported and dropped items) on;
- probes and tooling (health, metrics, reflection) neither traced nor counted as HTTP or gRPC traffic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping
from importlib.metadata import entry_points

SIGNALS = ("traces", "metrics", "logs")
DEFAULT_SAMPLER = "parentbased_traceidratio"
DEFAULT_SAMPLE_RATIO = "0.1"
PROMETHEUS_EXPORTER = (
    "prometheus_multiprocess"  # this package's entry point (app.telemetry.prometheus_bridge)
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Anchored on the host, so that an item whose key is "metrics" is still traced.
FLASK_EXCLUDED_URLS = r"//[^/]+/healthz(\?|$),//[^/]+/readyz(\?|$),//[^/]+/metrics(\?|$)"
GRPC_EXCLUDED_SERVICES = "grpc.health.v1.Health,grpc.reflection.v1alpha.ServerReflection"

_EXPORTER_VARS = {
    "traces": "OTEL_TRACES_EXPORTER",
    "metrics": "OTEL_METRICS_EXPORTER",
    "logs": "OTEL_LOGS_EXPORTER",
}
_EXPORTER_GROUPS = {
    "traces": "opentelemetry_traces_exporter",
    "metrics": "opentelemetry_metrics_exporter",
    "logs": "opentelemetry_logs_exporter",
}
_RATIO_SAMPLERS = {"traceidratio", "parentbased_traceidratio"}
_PROTOCOLS = {"grpc", "http/protobuf"}  # what the Python OTLP exporters speak


def otlp_endpoint_set(signal: str, environ: MutableMapping[str, str] = os.environ) -> bool:
    return bool(
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the distro's defaults in `environ`, leaving every variable that is already set alone."""
    environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    if "OTEL_TRACES_SAMPLER" not in environ:
        environ["OTEL_TRACES_SAMPLER"] = DEFAULT_SAMPLER
        environ.setdefault("OTEL_TRACES_SAMPLER_ARG", DEFAULT_SAMPLE_RATIO)
    for signal in ("traces", "logs"):
        environ.setdefault(_EXPORTER_VARS[signal], "otlp" if otlp_endpoint_set(signal, environ) else "none")
    metric_exporters = [PROMETHEUS_EXPORTER] if environ.get(MULTIPROC_ENV) else []
    if otlp_endpoint_set("metrics", environ):
        metric_exporters.append("otlp")
    environ.setdefault(_EXPORTER_VARS["metrics"], ",".join(metric_exporters) or "none")
    logs_exported = exporter_names("logs", environ) != []
    environ.setdefault("OTEL_PYTHON_LOG_AUTO_INSTRUMENTATION", "true" if logs_exported else "false")
    environ.setdefault("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    environ.setdefault("OTEL_PYTHON_FLASK_EXCLUDED_URLS", FLASK_EXCLUDED_URLS)
    environ.setdefault("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", GRPC_EXCLUDED_SERVICES)


def exporter_names(signal: str, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    names = [n.strip() for n in environ.get(_EXPORTER_VARS[signal], "").split(",") if n.strip()]
    return [] if names == ["none"] else names


def problems(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """What is wrong with the OTEL_* variables, with the distro's defaults applied; [] when nothing is.

    The SDK would warn and carry on (a bad sampler ratio silently becomes 1.0) or fail in every worker
    (an exporter name that no package provides); checked once, before any worker starts.
    """
    env = dict(environ)
    apply_defaults(env)
    found: list[str] = []
    for signal in SIGNALS:
        # "otlp" is the SDK's alias for the exporter of the configured protocol.
        available = {"otlp", *(ep.name for ep in entry_points(group=_EXPORTER_GROUPS[signal]))}
        unknown = [n for n in exporter_names(signal, env) if n not in available]
        if unknown:
            found.append(
                f"{_EXPORTER_VARS[signal]}: no exporter called {', '.join(map(repr, unknown))} "
                f"(installed: {', '.join(sorted(available)) or 'none'})"
            )
    for var in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        *(f"OTEL_EXPORTER_OTLP_{s.upper()}_PROTOCOL" for s in SIGNALS),
    ):
        value = env.get(var, "").strip()
        if value and value not in _PROTOCOLS:
            found.append(f"{var}: unsupported protocol {value!r} ({', '.join(sorted(_PROTOCOLS))})")
    if env.get("OTEL_TRACES_SAMPLER", "").strip().lower() in _RATIO_SAMPLERS:
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if raw and not _is_ratio(raw):
            found.append(f"OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio from 0 to 1, got {raw!r}")
    if PROMETHEUS_EXPORTER in exporter_names("metrics", env) and not env.get(MULTIPROC_ENV):
        found.append(f"OTEL_METRICS_EXPORTER: {PROMETHEUS_EXPORTER} needs {MULTIPROC_ENV}")
    return found


def _is_ratio(raw: str) -> bool:
    try:
        return 0.0 <= float(raw) <= 1.0
    except ValueError:
        return False


def listed(value: str | None) -> Iterable[str]:
    """The names of a comma-separated variable such as OTEL_PYTHON_DISABLED_INSTRUMENTATIONS."""
    return (part.strip() for part in (value or "").split(",") if part.strip())
