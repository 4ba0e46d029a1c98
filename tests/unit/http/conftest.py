"""The HTTP adapter's fixtures: Flask's test client in front of the real services (real redis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.domain.auth import Authenticator
from app.http import create_app
from app.settings import Settings
from app.telemetry.flask_instrumentation import PlatformFlaskInstrumentor
from app.worker import build_services


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    services = build_services(settings)
    services.start()
    # In a worker the distro instruments every Flask app; here the session's in-memory providers do.
    yield PlatformFlaskInstrumentor.instrument_app(
        create_app(settings, services, instance_id="test-instance")
    )
    services.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(settings: Settings, scope: str = "read write admin", sub: str = "tester") -> dict[str, str]:
    return {"Authorization": f"Bearer {Authenticator(settings).mint(sub, scope.split(), 600)}"}
