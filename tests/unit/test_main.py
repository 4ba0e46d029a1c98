"""The command line (`python -m app`): help that says what matters, and bad arguments named."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.__main__ import main, parser
from app.domain.auth import SCOPES
from tests.conftest import free_port


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APP_ENV", "dev")
    monkeypatch.setenv("DEV_SECRETS_FILE", str(tmp_path / "dev-secrets.json"))


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        parser().parse_args([command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["serve", "upstream"])
def test_serve_and_upstream_help_list_the_main_settings(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command, capsys)
    assert "README.md" in text and "APP_ENV=dev" in text and "REDIS_URL" in text
    assert ("HTTP_PORT" if command == "serve" else "UPSTREAM_PORT") in text


def test_token_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of("token", capsys).split())
    assert "(default: read)" in text and "(default: 3600)" in text


@pytest.mark.parametrize("ttl", ["0", "-5", "86401", "soon"])
def test_a_bad_ttl_is_named(ttl: str, dev: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["token", "--sub", "alice", "--ttl", ttl], capsys)
    assert f"argument --ttl: must be a whole number of seconds from 1 to 86400, got '{ttl}'" in err


@pytest.mark.parametrize("scope", ["read bogus", "", "READ"])
def test_an_unknown_scope_is_refused(scope: str, dev: None, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["token", "--sub", "alice", "--scope", scope], capsys)
    assert "argument --scope:" in err and ", ".join(SCOPES) in err


def test_a_bad_subject_is_named(dev: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "not allowed"]) == 2
    assert "error: argument --sub: must be 1 to 128 of" in capsys.readouterr().err


def test_a_token_is_minted(dev: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "alice", "--scope", "read write", "--ttl", "60"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT


def test_a_taken_port_is_one_line_naming_its_setting(
    dev: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("HTTP_PORT", str(port))
        monkeypatch.setenv("GRPC_PORT", str(free_port()))
        assert main(["serve"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "PORT" in line]
    assert err == [
        f"error: HTTP_PORT={port}: cannot listen on 127.0.0.1:{port}: Address already in use (another "
        "process holds the port, or BIND_HOST is not a local address)"
    ]
