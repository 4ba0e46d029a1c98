"""README's "Run it locally" blocks, run as written against the real service (only the ports are moved to
free ones), so that a newcomer's first commands keep working."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_until
from tests.e2e.conftest import Proc, base_env, start_api, start_upstream

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"


def local_run_blocks() -> list[str]:
    """The sh blocks of README's "Run it locally" section, in order."""
    text = README.read_text()
    section = text[text.index("## Run it locally") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def block_with(needle: str) -> str:
    matches = [b for b in local_run_blocks() if needle in b]
    assert len(matches) == 1, f"README has {len(matches)} local-run blocks with {needle!r}"
    return matches[0]


def bash(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """As a user's shell runs pasted lines: each command whatever the last one did."""
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_redis_command_listens_on_loopback_only_and_leaves_no_file(tmp_path: Path) -> None:
    (line,) = [s for s in block_with("redis-server").splitlines() if s.startswith("redis-server")]
    port = free_port()
    command = line.split("#")[0].replace("--port 6379", f"--port {port}")
    assert f"--port {port}" in command
    started = bash(command, {"PATH": "/usr/local/bin:/usr/bin:/bin"}, cwd=tmp_path)
    assert started.returncode == 0, started.stderr

    def cli(*args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout

    try:
        wait_until(lambda: cli("PING").strip() == "PONG", timeout=10, message="redis to answer")
        assert cli("CONFIG", "GET", "bind").split() == ["bind", "127.0.0.1"]
        assert cli("CONFIG", "GET", "save").split() == ["save"]  # no snapshots
        assert cli("CONFIG", "GET", "appendonly").split() == ["appendonly", "no"]
        cli("SET", "k", "v")
    finally:
        cli("SHUTDOWN")  # as a user would stop it: a default shutdown saves if saving is configured
    wait_until(lambda: cli("PING").strip() != "PONG", timeout=10, message="redis to stop")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def service(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, dict[str, str]]]:
    env = base_env(redis_server, tmp_path_factory.mktemp("readme"))
    upstream = start_upstream(env)
    api = start_api(env, upstream)
    yield api, env
    api.stop()
    upstream.stop()


def on_free_ports(block: str, api: Proc) -> str:
    return block.replace("localhost:8080", f"localhost:{api.port}").replace(
        "localhost:50051", f"localhost:{api.grpc_port}"
    )


def test_the_curl_block(service: tuple[Proc, dict[str, str]]) -> None:
    api, env = service
    out = bash(on_free_ports(block_with("curl -s"), api), env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.count('"hello":"world"') + text.count('"hello": "world"') == 2, text  # PUT, then GET
    assert '"symbol":"ACME"' in text.replace(" ", ""), text
    assert '"ciphertext"' in text and '"count":78498' in text.replace(" ", ""), text
    assert '"openapi"' in text and "# HELP" in text, (text[-600:], out.stderr)
    assert '"status":4' not in text.replace(" ", "") and '"status":5' not in text.replace(" ", ""), text


def test_the_python_grpc_block(service: tuple[Proc, dict[str, str]]) -> None:
    api, env = service
    token = block_with("app token").splitlines()[0]
    assert token.startswith("TOKEN=$(")
    grpc_block = block_with("grpc.insecure_channel")
    out = bash(token + "\n" + on_free_ports(grpc_block, api), env)
    assert out.returncode == 0, out.stderr
    assert 'symbol: "ACME"' in out.stdout and "price:" in out.stdout, out.stdout
