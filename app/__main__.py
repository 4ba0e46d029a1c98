"""Command line: `python -m app serve | upstream | token`."""

from __future__ import annotations

import argparse
import sys

from app.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the API: gunicorn with WEB_CONCURRENCY workers, HTTP and gRPC in each")
    sub.add_parser("upstream", help="the quotes dependency, with fault injection")
    token = sub.add_parser("token", help="mint a bearer token from the configured signing key")
    token.add_argument("--sub", required=True, help="subject (the caller's name)")
    token.add_argument("--scope", default="read", help='space-separated scopes, e.g. "read write admin"')
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (1..86400)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.command == "token":
        from app.domain.auth import Authenticator
        from app.domain.errors import DomainError

        try:
            print(Authenticator(settings).mint(args.sub, args.scope.split(), args.ttl))
        except DomainError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 2
        return 0

    from app import gunicorn_server
    from app.worker import API, UPSTREAM

    if problems := gunicorn_server.configuration_problems():
        print("error: invalid configuration:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    gunicorn_server.run(settings, API if args.command == "serve" else UPSTREAM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
