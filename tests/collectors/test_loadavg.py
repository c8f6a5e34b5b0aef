"""The loadavg collector: parser on inline text, collector on the fixture and live."""

from __future__ import annotations

import pytest

from nodeagent.collectors import loadavg
from nodeagent.collectors.loadavg import LoadAvg, parse_loadavg
from nodeagent.hostfs import HostPaths, ParseError
from tests.collectors.conftest import FIXTURES, Collect


def test_parse_loadavg() -> None:
    """The first three fields are the 1, 5 and 15 minute averages."""
    assert LoadAvg(0.21, 0.37, 0.39) == parse_loadavg("0.21 0.37 0.39 1/719 19737\n")


@pytest.mark.parametrize("text", ["", "0.1 0.2", "0.1 x 0.3 1/2 3"])
def test_parse_loadavg_rejects_malformed(text: str) -> None:
    """Too few fields or a non-number is a ParseError quoting the text."""
    with pytest.raises(ParseError, match="loadavg"):
        parse_loadavg(text)


async def test_collector_on_fixture(collect: Collect, fixture_paths: HostPaths) -> None:
    """The three gauges carry the fixture's values."""
    expected = parse_loadavg((FIXTURES / "proc" / "loadavg").read_text())
    families = await collect(loadavg.SPEC, fixture_paths)

    assert [expected.load1, expected.load5, expected.load15] == [
        families[n].samples[0][1] for n in ("node_load1", "node_load5", "node_load15")
    ]


async def test_missing_file_raises(collect: Collect, empty_paths: HostPaths) -> None:
    """Without /proc/loadavg the cycle fails with FileNotFoundError (procfs root misconfigured)."""
    with pytest.raises(FileNotFoundError):
        await collect(loadavg.SPEC, empty_paths)
