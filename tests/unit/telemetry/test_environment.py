"""The distro's OTEL_* defaults, and the check that refuses bad values before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.__main__ import main
from app.telemetry import environment


def defaults(**given: str) -> dict[str, str]:
    env = dict(given)
    environment.apply_defaults(env)
    return env


def test_without_an_endpoint_nothing_is_exported_and_metrics_go_to_the_metrics_files() -> None:
    env = defaults(PROMETHEUS_MULTIPROC_DIR="/tmp/m")
    assert env["OTEL_TRACES_EXPORTER"] == env["OTEL_LOGS_EXPORTER"] == "none"
    assert env["OTEL_METRICS_EXPORTER"] == "prometheus_multiprocess"
    assert env["OTEL_PYTHON_LOG_AUTO_INSTRUMENTATION"] == "false"  # no OTLP log handler with nowhere to send
    assert defaults()["OTEL_METRICS_EXPORTER"] == "none"


def test_an_endpoint_turns_otlp_on_per_signal() -> None:
    env = defaults(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317", PROMETHEUS_MULTIPROC_DIR="/tmp/m")
    assert env["OTEL_TRACES_EXPORTER"] == env["OTEL_LOGS_EXPORTER"] == "otlp"
    assert env["OTEL_METRICS_EXPORTER"] == "prometheus_multiprocess,otlp"
    assert env["OTEL_PYTHON_LOG_AUTO_INSTRUMENTATION"] == "true"
    only_traces = defaults(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://tempo:4317")
    assert (only_traces["OTEL_TRACES_EXPORTER"], only_traces["OTEL_LOGS_EXPORTER"]) == ("otlp", "none")


def test_the_default_sampler_is_parent_based_ten_percent() -> None:
    env = defaults()
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.1")
    assert defaults(OTEL_TRACES_SAMPLER_ARG="0.25")["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    named = defaults(OTEL_TRACES_SAMPLER="always_on")
    assert named["OTEL_TRACES_SAMPLER"] == "always_on" and "OTEL_TRACES_SAMPLER_ARG" not in named


def test_explicit_values_always_win() -> None:
    given = {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_PYTHON_FLASK_EXCLUDED_URLS": "ping",
        "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "false",
    }
    assert defaults(**given).items() >= given.items()
    env = defaults()
    assert env["OTEL_SEMCONV_STABILITY_OPT_IN"] == "http"
    assert env["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"] == "true"
    assert "Health" in env["OTEL_PYTHON_GRPC_EXCLUDED_SERVICES"]


@pytest.mark.parametrize("sampler", ["", "traceidratio", "parentbased_traceidratio"])
@pytest.mark.parametrize("arg", ["1.5", "-0.1", "ten percent", "nan"])
def test_a_bad_ratio_is_named(sampler: str, arg: str) -> None:
    env = {"OTEL_TRACES_SAMPLER_ARG": arg}
    if sampler:
        env["OTEL_TRACES_SAMPLER"] = sampler
    assert environment.problems(env) == [
        f"OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio from 0 to 1, got {arg!r}"
    ]


def test_a_named_sampler_keeps_its_own_argument() -> None:
    assert environment.problems({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "n/a"}) == []


def test_a_bad_protocol_and_an_unknown_exporter_are_named() -> None:
    problems = environment.problems(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
            "OTEL_TRACES_EXPORTER": "otlp,zipkin",
        }
    )
    assert problems[0].startswith("OTEL_TRACES_EXPORTER: no exporter called 'zipkin' (installed: ")
    assert problems[1].startswith("OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'thrift'")
    assert len(problems) == 2


def test_the_metrics_files_need_their_directory() -> None:
    assert environment.problems({"OTEL_METRICS_EXPORTER": "prometheus_multiprocess"}) == [
        "OTEL_METRICS_EXPORTER: prometheus_multiprocess needs PROMETHEUS_MULTIPROC_DIR"
    ]


def test_serve_refuses_to_start_with_a_readable_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.setenv("DEV_SECRETS_FILE", str(tmp_path / "dev-secrets.json"))
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "error: OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio" in err
    assert "Traceback" not in err
