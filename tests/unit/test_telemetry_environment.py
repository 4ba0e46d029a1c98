"""The OTEL_* variables the service reads are checked before any process starts, with readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.__main__ import main
from app.telemetry.setup import default_sampler, environment_problems

VARS = (
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_sampler_is_parent_based_ten_percent(env: pytest.MonkeyPatch) -> None:
    sampler = default_sampler()
    assert sampler is not None
    assert "TraceIdRatioBased{0.1}" in sampler.get_description()
    assert sampler.get_description().startswith("ParentBased")


def test_sampler_arg_sets_the_default_samplers_ratio(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = default_sampler()
    assert sampler is not None and "TraceIdRatioBased{0.25}" in sampler.get_description()
    assert environment_problems() == []


def test_a_named_sampler_is_left_to_the_sdk(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_TRACES_SAMPLER", "always_on")
    env.setenv("OTEL_TRACES_SAMPLER_ARG", "not used by always_on")
    assert default_sampler() is None
    assert environment_problems() == []


@pytest.mark.parametrize("sampler", ["", "traceidratio", "parentbased_traceidratio"])
@pytest.mark.parametrize("arg", ["1.5", "-0.1", "ten percent", "nan"])
def test_a_bad_ratio_is_named(env: pytest.MonkeyPatch, sampler: str, arg: str) -> None:
    if sampler:
        env.setenv("OTEL_TRACES_SAMPLER", sampler)
    env.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    assert environment_problems() == [
        f"OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio from 0 to 1, got {arg!r}"
    ]


def test_a_bad_protocol_is_named_once(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
    (problem,) = environment_problems()
    assert problem.startswith("OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol 'thrift'")


def test_serve_refuses_to_start_with_a_readable_message(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("APP_ENV", "dev")
    env.setenv("DEV_SECRETS_FILE", str(tmp_path / "dev-secrets.json"))
    env.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "error: invalid configuration:\n  OTEL_TRACES_SAMPLER_ARG: expected a sampling ratio" in err
    assert "Traceback" not in err
