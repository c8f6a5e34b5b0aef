"""
Regenerates the protobuf modules of this package from its ``.proto`` files with grpcio-tools
(a dev dependency): ``python3 -m nodeagent.sources.proto.regenerate``. The generated modules are committed;
``tests/test_proto_generated.py`` fails when they differ from what this command writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[2]


def proto_files() -> list[Path]:
    """The ``.proto`` sources, in a stable order."""
    return sorted(PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write ``*_pb2.py`` and ``*_pb2.pyi`` for every proto file under ``out_dir``. No ``*_pb2_grpc.py``: the
    clients call methods by their full names on a channel, and the generated servicer bases are unused.

    Imports in the generated code are ``nodeagent.sources.proto.*`` because the include root is the
    repository root; ``out_dir`` plays the repository root's part.

    Raises:
        RuntimeError: protoc reported an error.
    """
    from grpc_tools import protoc  # a dev dependency: only this command needs it

    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    rel = [str(p.relative_to(REPO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def main() -> int:
    """Regenerate in place."""
    generate(REPO_ROOT)
    print(f"regenerated {len(proto_files())} proto files in {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
