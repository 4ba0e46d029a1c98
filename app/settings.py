"""Typed settings, read once from the environment and validated before anything starts.

Secrets have no defaults. A missing or placeholder secret stops the process with a message that names
the variable, except in the explicit development mode (`APP_ENV=dev`), which says so loudly and uses
keys generated once into a git-ignored file so that every local process (all workers, the upstream and
`python -m app token`) agrees on them. Tokens are bound to the environment through their audience, so
a token minted in dev mode never verifies anywhere else.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDERS = frozenset({"", "changeme", "change-me", "changethis", "secret", "placeholder", "xxx", "todo"})


def default_dev_secrets_file() -> Path:
    """One file per user, whatever the current directory: a token minted anywhere on the machine verifies
    against a service started anywhere else (XDG base directories: user state)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "platform" / "dev-secrets.json"


class SettingsError(Exception):
    """Bad configuration: the message names the variable and is meant for an operator."""


def b64decode(value: str, *, name: str, size: int) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} is not valid base64") from exc
    if len(raw) != size:
        raise ValueError(f"{name} must decode to {size} bytes, got {len(raw)}")
    return raw


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_keyring(value: str, *, name: str) -> dict[str, bytes]:
    """`kid:base64key,kid:base64key`; the first key encrypts, all of them decrypt (rotation)."""
    keys: dict[str, bytes] = {}
    for part in value.split(","):
        kid, sep, b64 = part.strip().partition(":")
        if not sep or not kid or not b64:
            raise ValueError(f"{name} must look like 'kid:base64key[,kid:base64key...]'")
        if kid in keys:
            raise ValueError(f"{name} repeats key id {kid!r}")
        keys[kid] = b64decode(b64, name=f"{name} key {kid!r}", size=32)
    return keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    app_env: Literal["dev", "test", "staging", "prod"] = "prod"
    service_version: str = "0.1.0"
    git_commit: str = "unknown"

    bind_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    grpc_port: Annotated[int, Field(ge=1, le=65535)] = 50051
    web_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    http_threads: Annotated[int, Field(ge=1, le=256)] = 8
    grpc_handler_threads: Annotated[int, Field(ge=1, le=256)] = 8
    graceful_timeout_s: Annotated[float, Field(gt=0, le=300)] = 20.0
    # On SIGTERM: readiness 503 at once, but keep serving (new connections too) this long before draining,
    # so that load balancers and clients notice before anything is refused.
    drain_delay_s: Annotated[float, Field(ge=0, le=60)] = 5.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: Annotated[float, Field(gt=0, le=30)] = 0.5

    cache_max_items: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    cache_ttl_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    pool_processes: Annotated[int, Field(ge=1, le=64)] = 1
    pool_queue_size: Annotated[int, Field(ge=1, le=10_000)] = 32
    pool_task_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0

    rate_limit: str = "200/second"

    # Access lines always go to stdout as JSON; over OTLP only on request (they repeat the server span).
    otlp_access_logs: bool = False

    # Background jobs (`python -m app jobs`): processes, jobs each runs at once, and the queue's policy.
    jobs_port: Annotated[int, Field(ge=1, le=65535)] = 8082  # its probes and /metrics
    jobs_processes: Annotated[int, Field(ge=1, le=64)] = 2
    jobs_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    jobs_max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    jobs_visibility_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    jobs_retry_base_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    jobs_retry_cap_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    jobs_max_queued: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    upstream_port: Annotated[int, Field(ge=1, le=65535)] = 8081
    upstream_url: str = "http://127.0.0.1:8081"
    upstream_connect_timeout_s: Annotated[float, Field(gt=0, le=30)] = 0.25
    upstream_read_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    upstream_deadline_s: Annotated[float, Field(gt=0, le=120)] = 2.5
    upstream_max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    breaker_window: Annotated[int, Field(ge=1, le=1000)] = 20
    breaker_min_calls: Annotated[int, Field(ge=1, le=1000)] = 10
    breaker_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    breaker_open_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    breaker_half_open_calls: Annotated[int, Field(ge=1, le=100)] = 3

    # Secrets (base64url). No defaults outside dev mode; never in repr() or str().
    auth_signing_key: Annotated[str, NoDecode, Field(repr=False)] = ""
    crypto_keys: Annotated[str, NoDecode, Field(repr=False)] = ""
    crypto_signing_key: Annotated[str, NoDecode, Field(repr=False)] = ""

    # Where dev mode keeps its generated keys.
    dev_secrets_file: Path = Field(default_factory=default_dev_secrets_file)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '200/second': {exc}") from exc
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("upstream_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _breaker_can_open(self) -> Settings:
        if self.breaker_min_calls > self.breaker_window:
            raise ValueError(
                f"BREAKER_MIN_CALLS ({self.breaker_min_calls}) exceeds BREAKER_WINDOW "
                f"({self.breaker_window}): the circuit breaker could never open"
            )
        return self

    @model_validator(mode="after")
    def _secrets(self) -> Settings:
        for name in ("auth_signing_key", "crypto_keys", "crypto_signing_key"):
            value: str = getattr(self, name)
            if self.app_env == "dev" and not value:
                continue  # dev mode fills it from the generated file
            if value.strip().lower() in PLACEHOLDERS:
                raise ValueError(
                    f"{name.upper()} is missing or a placeholder; set a real secret "
                    "(see README, 'Configuration'), or run with APP_ENV=dev for development keys"
                )
        # Parse now so that a malformed key fails at start, not at the first request.
        if self.auth_signing_key:
            b64decode(self.auth_signing_key, name="AUTH_SIGNING_KEY", size=32)
        if self.crypto_signing_key:
            b64decode(self.crypto_signing_key, name="CRYPTO_SIGNING_KEY", size=32)
        if self.crypto_keys:
            parse_keyring(self.crypto_keys, name="CRYPTO_KEYS")
        return self

    @property
    def dev_mode(self) -> bool:
        return self.app_env == "dev"

    @cached_property
    def _secrets_source(self) -> dict[str, str]:
        if not self.dev_mode:
            return {
                "auth_signing_key": self.auth_signing_key,
                "crypto_keys": self.crypto_keys,
                "crypto_signing_key": self.crypto_signing_key,
            }
        dev = load_or_create_dev_secrets(self.dev_secrets_file)
        # Explicitly set variables still win in dev mode.
        return {k: getattr(self, k) or dev[k] for k in dev}

    @property
    def token_audience(self) -> str:
        return f"platform:{self.app_env}"

    @cached_property
    def auth_private_key(self) -> Ed25519PrivateKey:
        seed = b64decode(self._secrets_source["auth_signing_key"], name="AUTH_SIGNING_KEY", size=32)
        return Ed25519PrivateKey.from_private_bytes(seed)

    @cached_property
    def auth_public_key(self) -> Ed25519PublicKey:
        return self.auth_private_key.public_key()

    @cached_property
    def crypto_keyring(self) -> dict[str, bytes]:
        return parse_keyring(self._secrets_source["crypto_keys"], name="CRYPTO_KEYS")

    @cached_property
    def crypto_signing_private_key(self) -> Ed25519PrivateKey:
        seed = b64decode(self._secrets_source["crypto_signing_key"], name="CRYPTO_SIGNING_KEY", size=32)
        return Ed25519PrivateKey.from_private_bytes(seed)


def load_or_create_dev_secrets(path: Path) -> dict[str, str]:
    """Generate the development keys once; every later process reads the same file.

    O_EXCL makes creation race-free when several processes start at once.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
                    return {str(k): str(v) for k, v in data.items()}
            except (OSError, json.JSONDecodeError):
                pass
            import time

            time.sleep(0.02)
        raise SettingsError(f"{path} exists but is not a valid dev secrets file; delete it") from None
    except OSError as exc:
        raise SettingsError(f"DEV_SECRETS_FILE: cannot create {path}: {exc.strerror}") from None
    secrets = {
        "auth_signing_key": b64encode(os.urandom(32)),
        "crypto_keys": f"dev1:{b64encode(os.urandom(32))}",
        "crypto_signing_key": b64encode(os.urandom(32)),
    }
    with os.fdopen(fd, "w") as fh:
        json.dump(secrets, fh)
    return secrets


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from the environment (or `env`); raise SettingsError with a readable message."""
    try:
        if env is None:
            settings = Settings()
        else:
            settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]).upper()
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None
    if settings.dev_mode:
        print(
            "WARNING: APP_ENV=dev: using development keys from "
            f"{settings.dev_secrets_file.resolve()}; never use this mode outside a developer machine",
            file=sys.stderr,
        )
        # Touch the keys now so that the file exists before any worker forks.
        _ = settings.crypto_keyring
    return settings
