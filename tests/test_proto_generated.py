"""The committed protobuf/gRPC modules are exactly what ``python3 -m nodeagent.sources.proto.regenerate`` writes."""

from __future__ import annotations

from pathlib import Path

from nodeagent.sources.proto import regenerate


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    regenerate.generate(tmp_path)
    fresh_dir = tmp_path / "nodeagent" / "sources" / "proto"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir()}
    committed = {
        p.name: p.read_bytes() for p in regenerate.PACKAGE_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi"))
    }

    assert sorted(fresh) == sorted(committed)
    assert [name for name in fresh if fresh[name] != committed[name]] == []
    # Every .proto has its modules.
    assert {p.stem for p in regenerate.proto_files()} == {n.split("_pb2")[0] for n in fresh}
