from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, b64encode, load_settings
from tests.conftest import ROOT
from tests.unit.conftest import settings_env

SECRETS = ("AUTH_SIGNING_KEY", "CRYPTO_KEYS", "CRYPTO_SIGNING_KEY")


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    return str(info.value)


@pytest.mark.parametrize("name", SECRETS)
@pytest.mark.parametrize("value", [None, "", "changeme", "  CHANGEME ", "secret", "todo"])
def test_missing_or_placeholder_secret_is_refused_by_name(name: str, value: str | None) -> None:
    env = settings_env(app_env="prod")
    if value is None:
        del env[name]
    else:
        env[name] = value
    message = refused(env)
    assert name in message
    assert "placeholder" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AUTH_SIGNING_KEY", b64encode(os.urandom(16)), "AUTH_SIGNING_KEY must decode to 32 bytes, got 16"),
        ("CRYPTO_SIGNING_KEY", "!!!not base64!!!", "CRYPTO_SIGNING_KEY is not valid base64"),
        ("CRYPTO_KEYS", b64encode(os.urandom(32)), "CRYPTO_KEYS must look like 'kid:base64key"),
        ("CRYPTO_KEYS", f"a:{b64encode(os.urandom(32))},a:{b64encode(os.urandom(32))}", "repeats key id 'a'"),
        ("CRYPTO_KEYS", f"a:{b64encode(os.urandom(31))}", "CRYPTO_KEYS key 'a' must decode to 32 bytes"),
    ],
)
def test_malformed_secret_is_refused_without_echoing_it(name: str, value: str, expected: str) -> None:
    message = refused({**settings_env(app_env="prod"), name: value})
    assert expected in message
    assert value not in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HTTP_PORT", "abc", "HTTP_PORT: Input should be a valid integer"),
        ("HTTP_PORT", "70000", "HTTP_PORT: Input should be less than or equal to 65535"),
        ("REDIS_TIMEOUT_S", "0", "REDIS_TIMEOUT_S: Input should be greater than 0"),
        ("BREAKER_FAILURE_RATE", "1.5", "BREAKER_FAILURE_RATE: Input should be less than or equal to 1"),
        ("APP_ENV", "production", "APP_ENV: Input should be 'dev', 'test', 'staging' or 'prod'"),
        ("RATE_LIMIT", "lots", "RATE_LIMIT: not a rate limit like '200/second'"),
        ("REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL: must start with redis://"),
        ("UPSTREAM_URL", "ftp://x", "UPSTREAM_URL: must start with http:// or https://"),
    ],
)
def test_bad_values_give_readable_errors(name: str, value: str, expected: str) -> None:
    message = refused({**settings_env(), name: value})
    assert message.startswith("invalid configuration:\n")
    assert expected in message
    assert "Traceback" not in message and "pydantic" not in message


def test_all_bad_values_are_reported_at_once() -> None:
    message = refused({**settings_env(), "HTTP_PORT": "x", "POOL_PROCESSES": "0"})
    assert "HTTP_PORT" in message and "POOL_PROCESSES" in message


def test_good_settings_parse_and_normalise() -> None:
    settings = load_settings(
        {**settings_env(app_env="prod"), "UPSTREAM_URL": "http://up:8081/", "HTTP_PORT": "9000"}
    )
    assert settings.http_port == 9000
    assert settings.upstream_url == "http://up:8081"
    assert settings.token_audience == "platform:prod"
    assert len(settings.crypto_keyring["k1"]) == 32
    assert settings.auth_public_key is settings.auth_public_key  # derived once


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in settings_env(http_threads="3").items():
        monkeypatch.setenv(key, value)
    assert load_settings().http_threads == 3


def test_dev_mode_generates_one_private_file_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "dev-secrets.json"
    first = load_settings({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(path)})
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_settings({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(path)})
    assert first.crypto_keyring == second.crypto_keyring
    assert first.auth_public_key.public_bytes_raw() == second.auth_public_key.public_bytes_raw()
    assert first.token_audience == "platform:dev"


def test_dev_mode_explicit_variables_win(tmp_path: Path) -> None:
    key = b64encode(os.urandom(32))
    settings = load_settings(
        {"APP_ENV": "dev", "DEV_SECRETS_FILE": str(tmp_path / "d.json"), "CRYPTO_KEYS": f"mine:{key}"}
    )
    assert list(settings.crypto_keyring) == ["mine"]


def test_dev_mode_processes_started_together_agree_on_the_keys(dev_env: dict[str, str]) -> None:
    script = (
        "from app.settings import load_settings\n"
        "s = load_settings()\n"
        "print(s.crypto_keyring['dev1'].hex(), s.auth_public_key.public_bytes_raw().hex())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=dev_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b"APP_ENV=dev" in err  # says so loudly
        outputs.add(out)
    assert len(outputs) == 1
    stored = json.loads(Path(dev_env["DEV_SECRETS_FILE"]).read_text())
    assert set(stored) == {"auth_signing_key", "crypto_keys", "crypto_signing_key"}


def test_dev_keys_live_in_one_place_per_user_whatever_the_directory(tmp_path: Path) -> None:
    """A token minted from any directory verifies in a service started from any other."""
    env = {k: v for k, v in os.environ.items() if k != "DEV_SECRETS_FILE"}
    env.update(APP_ENV="dev", HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    env.pop("XDG_STATE_HOME", None)
    mint = [sys.executable, "-m", "app", "token", "--sub", "alice"]
    verify = (
        "import sys\n"
        "from app.domain.auth import Authenticator\n"
        "from app.settings import load_settings\n"
        "print(Authenticator(load_settings()).authenticate('Bearer ' + sys.argv[1]).subject)\n"
    )
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    minted = subprocess.run(mint, cwd=tmp_path / "one", env=env, capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr
    expected = tmp_path / "home" / ".local" / "state" / "platform" / "dev-secrets.json"
    assert f"development keys from {expected};" in minted.stderr  # the full path, said once
    verified = subprocess.run(
        [sys.executable, "-c", verify, minted.stdout.strip()],
        cwd=tmp_path / "two",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == "alice"
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700


def test_a_relative_dev_secrets_file_is_reported_with_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    load_settings({"APP_ENV": "dev", "DEV_SECRETS_FILE": "keys.json"})
    assert f"development keys from {tmp_path / 'keys.json'};" in capsys.readouterr().err


def test_corrupt_dev_secrets_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("{not json")
    message = refused({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(path)})
    assert str(path) in message and "delete it" in message


def test_secrets_never_appear_in_repr() -> None:
    env = settings_env()
    settings = load_settings(env)
    for name in SECRETS:
        value = env[name].split(":")[-1]
        assert value not in repr(settings) and value not in str(settings)


@pytest.mark.parametrize("name", SECRETS)
def test_dev_mode_refuses_a_malformed_explicit_secret_at_start(tmp_path: Path, name: str) -> None:
    refused({"APP_ENV": "dev", "DEV_SECRETS_FILE": str(tmp_path / "d.json"), name: "short"})


def test_breaker_min_calls_cannot_exceed_the_window() -> None:
    message = refused({**settings_env(), "BREAKER_WINDOW": "5", "BREAKER_MIN_CALLS": "10"})
    assert "BREAKER_MIN_CALLS" in message
