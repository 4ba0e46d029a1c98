"""The checked-in gRPC stubs are exactly what `python -m app.rpc.generate` produces from the .proto."""

from __future__ import annotations

import importlib
from pathlib import Path

from app.rpc.generate import OUTPUTS, PROTO, ROOT, generate


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert [p.relative_to(tmp_path) for p in written] == list(OUTPUTS)
    stale = [str(rel) for rel in OUTPUTS if (tmp_path / rel).read_bytes() != (ROOT / rel).read_bytes()]
    assert not stale, f"stale generated stubs {stale}: run `python -m app.rpc.generate` and commit the result"


def test_stubs_import_under_the_app_package_not_as_top_level_platform() -> None:
    grpc_module = importlib.import_module("app.rpc.platform.v1.platform_pb2_grpc")
    source = (ROOT / PROTO.with_name("platform_pb2_grpc.py")).read_text()
    assert "from app.rpc.platform.v1 import platform_pb2" in source
    assert grpc_module.PlatformServiceStub is not None
    import platform

    assert hasattr(platform, "python_version")  # the standard library's module is not shadowed
