"""Regenerate the checked-in gRPC stubs: `python -m app.rpc.generate`.

The repository root is the include root, so the generated modules import as `app.rpc.platform.v1.*`
(a top-level `platform` package would shadow the standard library's). grpcio-tools is a development
dependency only; the service imports the checked-in output.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("app/rpc/platform/v1/platform.proto")
OUTPUTS = (
    PROTO.with_name("platform_pb2.py"),
    PROTO.with_name("platform_pb2.pyi"),
    PROTO.with_name("platform_pb2_grpc.py"),
)


def generate(out_dir: Path, *, root: Path = ROOT) -> list[Path]:
    """Compile the .proto under `root` into `out_dir` (same relative layout); return the written files."""
    from importlib.resources import files

    from grpc_tools import protoc

    well_known = files("grpc_tools").joinpath("_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(root / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {PROTO}")
    return [out_dir / path for path in OUTPUTS]


def main() -> int:
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
