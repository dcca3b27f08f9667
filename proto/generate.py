"""Regenerate fleet/v1/*_pb2*.py from proto/ (python proto/generate.py [OUT_DIR]).

The .proto files live under proto/fleet/v1/ so that generated imports are
package-relative (`from fleet.v1 import fleet_pb2`). The generated code is
committed; tests/test_wire.py regenerates it and fails on any difference.
"""
import pathlib
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc for every .proto under proto/ into out_dir; raise on failure."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)
