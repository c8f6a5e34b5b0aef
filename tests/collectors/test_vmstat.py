"""The /proc/vmstat parser, the vmstat collector and its field pattern option."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pydantic
import pytest

from nodeagent.collectors import vmstat
from nodeagent.collectors.vmstat import VmStat, VmstatConfig, parse_vmstat
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, read_host

FIXTURE_DEFAULT_FIELDS = {
    "node_vmstat_pgpgin": 718025.0,
    "node_vmstat_pgpgout": 612820.0,
    "node_vmstat_pswpin": 0.0,
    "node_vmstat_pswpout": 0.0,
    "node_vmstat_pgfault": 1168471.0,
    "node_vmstat_pgmajfault": 751.0,
    "node_vmstat_oom_kill": 0.0,
}


def test_parse_pairs() -> None:
    """Each line becomes a (name, value) pair in file order."""
    text = textwrap.dedent(
        """\
        nr_free_pages 6131705
        pgfault 1168471
        oom_kill 2
        """
    )
    expected = VmStat((("nr_free_pages", 6131705), ("pgfault", 1168471), ("oom_kill", 2)))
    assert expected == parse_vmstat(text)


@pytest.mark.parametrize(("line", "reason"), [("pgfault", "expected 'name value'"), ("pgfault x", "not an integer")])
def test_parse_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    """A line that is not ``name value`` raises a ParseError naming the source, line number and line."""
    with pytest.raises(ParseError, match=rf"^/proc/vmstat: line 2: {reason}.*{re.escape(repr(line))}"):
        parse_vmstat(f"pgpgin 1\n{line}\n")


def test_config_rejects_invalid_regex() -> None:
    """An invalid pattern is rejected by the config model with the key, the value and an example."""
    with pytest.raises(pydantic.ValidationError, match=r"fields\n.*not a valid regular expression"):
        VmstatConfig(fields="(oom")


async def test_collect_fixture_default_fields(fixture_paths: HostPaths, collect: Collect) -> None:
    """With node_exporter's default pattern exactly the oom_kill, pgpg*, pswp* and pg*fault fields are exported."""
    families = await collect(vmstat.SPEC, fixture_paths)
    assert FIXTURE_DEFAULT_FIELDS == {name: f.samples[0][1] for name, f in families.items()}
    fault = families["node_vmstat_pgfault"]
    assert ("untyped", "/proc/vmstat information field pgfault.") == (fault.type, fault.help)


async def test_collect_fixture_custom_fields(fixture_paths: HostPaths, collect: Collect) -> None:
    """A configured pattern replaces the default one and is searched, not anchored."""
    families = await collect(vmstat.SPEC, fixture_paths, fields="free_pages$")
    assert {"node_vmstat_nr_free_pages"} == set(families)


async def test_absent_vmstat_raises_file_not_found(empty_paths: HostPaths, collect: Collect) -> None:
    """A procfs root without ``vmstat`` raises FileNotFoundError (a broken root, not a missing feature)."""
    with pytest.raises(FileNotFoundError):
        await collect(vmstat.SPEC, empty_paths)


async def test_malformed_vmstat_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the offending line."""
    (tmp_path / "vmstat").write_text("pgpgin 1\npgfault 1 2\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/vmstat: line 2: .*'pgfault 1 2'"):
        await collect(vmstat.SPEC, HostPaths(procfs=str(tmp_path)))


async def test_live_matches_fresh_read(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the default fields are all present and none is ahead of a fresh read."""
    families = await collect(vmstat.SPEC, live_paths)
    fresh = {k: float(v) for k, v in (line.split() for line in read_host("/proc/vmstat").splitlines())}
    assert set(FIXTURE_DEFAULT_FIELDS) <= set(families)
    for name, family in families.items():
        field = name.removeprefix("node_vmstat_")
        assert 0 <= fresh[field] - family.samples[0][1] < 10_000_000, field
    assert fresh["oom_kill"] == families["node_vmstat_oom_kill"].samples[0][1]
