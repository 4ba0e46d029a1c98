"""Command line: `python -m app serve | jobs | upstream | token`."""

from __future__ import annotations

import argparse
import sys

from app.settings import SettingsError, load_settings

# The settings a first run touches; README's "Configuration" has them all.
SERVE_SETTINGS = """\
settings (environment variables; README.md, "Configuration", lists them all):
  APP_ENV=dev                    generated development keys (else AUTH_SIGNING_KEY, CRYPTO_KEYS,
                                 CRYPTO_SIGNING_KEY are required)
  HTTP_PORT, GRPC_PORT           8080, 50051 (BIND_HOST 127.0.0.1)
  WEB_CONCURRENCY                2 workers, each serving HTTP and gRPC
  REDIS_URL                      redis://127.0.0.1:6379/0
  UPSTREAM_URL                   http://127.0.0.1:8081 (the quotes dependency: python -m app upstream)
  RATE_LIMIT                     200/second per caller
  OTEL_EXPORTER_OTLP_ENDPOINT    where traces, metrics and logs go (unset: none; /metrics still works)

signals: SIGTERM (or Ctrl-C) drains and stops; SIGHUP replaces every worker with no failed request."""

JOBS_SETTINGS = """\
settings (environment variables; README.md, "Configuration", lists them all):
  APP_ENV=dev                    generated development keys, as for serve
  JOBS_PROCESSES                 2 consumer processes (gunicorn workers), each with its own consumer name
  JOBS_CONCURRENCY               2 jobs at once per process
  JOBS_PORT                      8082: /healthz, /readyz and /metrics (BIND_HOST 127.0.0.1)
  JOBS_MAX_ATTEMPTS              5, then the job goes to the dead letters
  JOBS_VISIBILITY_TIMEOUT_S      30: a job whose consumer stops renewing it is reclaimed after this long
  REDIS_URL                      redis://127.0.0.1:6379/0, where the queue lives
  OTEL_EXPORTER_OTLP_ENDPOINT    where traces, metrics and logs go

signals: SIGTERM (or Ctrl-C) takes no new job and finishes those in hand; SIGHUP replaces every process."""

UPSTREAM_SETTINGS = """\
settings (environment variables; README.md, "Configuration"):
  APP_ENV=dev                    generated development keys (else AUTH_SIGNING_KEY is required)
  UPSTREAM_PORT                  8081 (BIND_HOST 127.0.0.1)
  REDIS_URL                      redis://127.0.0.1:6379/0, where its fault injection (/chaos) is kept
  OTEL_EXPORTER_OTLP_ENDPOINT    where its telemetry goes"""


def _ttl(text: str) -> int:
    from app.domain.auth import MAX_TTL_S

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of seconds from 1 to {MAX_TTL_S}, got {text!r}"
        )
    return value


def _scopes(text: str) -> list[str]:
    from app.domain.auth import SCOPES

    scopes = text.split()
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scope {' '.join(unknown)!r}; choose from {', '.join(SCOPES)}"
            if unknown
            else f"give at least one of {', '.join(SCOPES)}"
        )
    return scopes


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True, metavar="{serve,jobs,upstream,token}")
    for name, summary, settings in (
        ("serve", "the API: gunicorn workers, each serving HTTP and gRPC", SERVE_SETTINGS),
        ("jobs", "the background job consumers: gunicorn workers, each consuming the queue", JOBS_SETTINGS),
        ("upstream", "the quotes dependency, with fault injection", UPSTREAM_SETTINGS),
    ):
        sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=settings,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    token = sub.add_parser(
        "token",
        help="mint a bearer token from the configured signing key",
        description="Mint a bearer token signed with AUTH_SIGNING_KEY (with APP_ENV=dev: the development "
        "key, the same one the service uses wherever it is run from).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    token.add_argument("--sub", required=True, help="subject: the caller's name")
    token.add_argument(
        "--scope", type=_scopes, default="read", help='space-separated scopes, e.g. "read write admin"'
    )
    token.add_argument("--ttl", type=_ttl, default=3600, help="lifetime in seconds, 1 to 86400")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.command == "token":
        from app.domain.auth import Authenticator
        from app.domain.errors import DomainError

        try:
            print(Authenticator(settings).mint(args.sub, args.scope, args.ttl))
        except DomainError as exc:
            option = {"subject": "--sub", "scopes": "--scope", "ttl_s": "--ttl"}.get(
                exc.field or "", exc.field
            )
            print(
                f"error: argument {option}: {exc.detail}" if option else f"error: {exc.detail}",
                file=sys.stderr,
            )
            return 2
        return 0

    from app import gunicorn_server
    from app.worker import API, JOBS, UPSTREAM

    role = {"serve": API, "jobs": JOBS}.get(args.command, UPSTREAM)
    if problems := gunicorn_server.configuration_problems(settings, role):
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return 2
    return gunicorn_server.run(settings, role)


if __name__ == "__main__":
    sys.exit(main())
