"""The load generator: covers every HTTP route and every gRPC method, loads in Locust, and really runs.

The route list comes from the service's OpenAPI document and the method list from the .proto, so a new
operation without load fails here. The end-to-end test runs Locust headless against the real service
(gunicorn with 2 workers, the upstream, redis-server) in the `slow` scenario and reads Locust's own
stats: every operation was called, none failed, and the faults were reset when the run ended.
"""

from __future__ import annotations

import ast
import csv
import re
import subprocess
from pathlib import Path

import pytest

from app.http.openapi import openapi_document
from tests.conftest import ROOT, wait_until
from tests.e2e.conftest import Stack, stack  # noqa: F401 - the shared real-process fixture
from tests.stack.compose_files import venv_tool

LOCUSTFILE = ROOT / "loadgen" / "locustfile.py"
PROTO = ROOT / "app" / "rpc" / "platform" / "v1" / "platform.proto"
GRPC_PREFIX = "/platform.v1.PlatformService/"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def http_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, ops in openapi_document()["paths"].items()
        for method in ops
        if method in HTTP_METHODS
    }


def grpc_methods() -> set[str]:
    methods = set(re.findall(r"^\s*rpc\s+(\w+)\s*\(", PROTO.read_text(), re.MULTILINE))
    assert len(methods) >= 11, methods
    return methods


def locust_binary() -> Path:
    binary = venv_tool("locust")
    if not binary.exists():
        pytest.skip("locust is not installed in this venv (it belongs in the test extras)")
    return binary


def test_locustfile_names_every_route_and_every_rpc() -> None:
    tree = ast.parse(LOCUSTFILE.read_text())
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    called = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "call"
        and n.args
        and isinstance(n.args[0], ast.Constant)
    }
    missing_paths = {path for _, path in http_operations()} - literals
    assert not missing_paths, f"routes the load generator never calls: {sorted(missing_paths)}"
    missing_rpcs = grpc_methods() - called
    assert not missing_rpcs, f"RPCs the load generator never calls: {sorted(missing_rpcs)}"


def test_locust_loads_the_locustfile_and_finds_the_users() -> None:
    proc = subprocess.run(
        [str(locust_binary()), "-f", str(LOCUSTFILE), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    users = {line.strip() for line in proc.stdout.splitlines()[1:]}
    assert users == {"HttpApiUser", "GrpcApiUser", "ChaosController"}


def test_an_unknown_scenario_stops_locust_with_a_clear_message() -> None:
    proc = subprocess.run(
        [str(locust_binary()), "-f", str(LOCUSTFILE), "--list"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LOAD_SCENARIO": "chaotic"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "LOAD_SCENARIO must be one of steady, errors, slow, breaker; got 'chaotic'" in proc.stderr


def read_stats(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """Locust's final stats CSV -> {(type, name): (requests, failures)}."""
    with path.open() as fh:
        return {
            (row["Type"], row["Name"]): (int(row["Request Count"]), int(row["Failure Count"]))
            for row in csv.DictReader(fh)
            if row["Name"] != "Aggregated"
        }


@pytest.mark.e2e
def test_a_short_slow_scenario_run_calls_everything_without_failures_and_resets_faults(
    stack: Stack,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    env = {
        **stack.env,
        "LOAD_SCENARIO": "slow",
        "GRPC_TARGET": f"127.0.0.1:{stack.api.grpc_port}",
        "UPSTREAM_URL": f"http://127.0.0.1:{stack.upstream.port}",
    }
    proc = subprocess.run(
        [
            str(locust_binary()),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--run-time",
            "15s",
            "--stop-timeout",
            "10",
            "--host",
            f"http://127.0.0.1:{stack.api.port}",
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    stats = read_stats(tmp_path / "run_stats.csv")
    failures = {k: v for k, v in stats.items() if v[1]}
    assert not failures, f"failed requests: {failures}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]

    seen = {key for key, (count, _) in stats.items() if count}
    missing_http = http_operations() - seen
    assert not missing_http, f"HTTP operations never called: {sorted(missing_http)}"
    missing_grpc = {("grpc", GRPC_PREFIX + m) for m in grpc_methods()} - seen
    assert not missing_grpc, f"RPCs never called: {sorted(missing_grpc)}"
    assert ("POST", "upstream /chaos") in seen, "the slow scenario slows the upstream down"

    # The run reset both chaos states when it stopped: nothing lingers. Workers re-read the shared
    # state at most once a second, hence the wait.
    def app_faults() -> dict[str, int]:
        state = stack.api.request("GET", "/admin/chaos", token=stack.admin_token).json()
        return {k: state[k] for k in ("loop_block_ms", "gil_block_ms")}

    wait_until(
        lambda: app_faults() == {"loop_block_ms": 0, "gil_block_ms": 0}, timeout=5, message="app reset"
    )
    upstream_chaos = stack.upstream.request("GET", "/chaos", token=stack.admin_token).json()
    assert upstream_chaos["latency_ms"] == 0, upstream_chaos
