"""The file-nr parser and the filefd collector."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nodeagent.collectors import filefd
from nodeagent.collectors.filefd import FileNr, parse_file_nr
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host


def test_parse_file_nr() -> None:
    """The first and third of the three tab-separated numbers are allocated and maximum."""
    assert FileNr(1184, 9223372036854775807) == parse_file_nr("1184\t0\t9223372036854775807\n")


@pytest.mark.parametrize(("text", "reason"), [("1184\t0\n", "expected 3 fields"), ("1184\t0\tmax\n", "not an integer")])
def test_parse_malformed_names_file_and_line(text: str, reason: str) -> None:
    """Anything but three integers raises a ParseError naming the source and the content."""
    with pytest.raises(ParseError, match=rf"^/proc/sys/fs/file-nr: line 1: {reason}.*{re.escape(repr(text.strip()))}"):
        parse_file_nr(text)


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture's allocated and maximum counts become two gauges with node_exporter's helps."""
    families = await collect(filefd.SPEC, fixture_paths)
    expected = {
        "node_filefd_allocated": ("gauge", "File descriptor statistics: allocated.", 139.0),
        "node_filefd_maximum": ("gauge", "File descriptor statistics: maximum.", 2466174.0),
    }
    assert expected == {name: (f.type, f.help, f.samples[0][1]) for name, f in families.items()}


async def test_absent_file_nr_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``sys/fs/file-nr`` raises FileNotFoundError (a broken root)."""
    with pytest.raises(FileNotFoundError):
        await collect(filefd.SPEC, empty_paths)


async def test_malformed_file_nr_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read."""
    (tmp_path / "sys" / "fs").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "file-nr").write_text("12\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/sys/fs/file-nr: line 1: expected 3 fields, got '12'"):
        await collect(filefd.SPEC, HostPaths(procfs=str(tmp_path)))


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the maximum equals a fresh read and the allocated count is close to it."""
    families = await collect(filefd.SPEC, live_paths)
    allocated, _, maximum = (float(v) for v in read_host("/proc/sys/fs/file-nr").split())
    assert maximum == families["node_filefd_maximum"].samples[0][1]
    assert abs(allocated - families["node_filefd_allocated"].samples[0][1]) < 1000
