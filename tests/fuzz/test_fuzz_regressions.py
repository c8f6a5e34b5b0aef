"""
The inputs on which the fuzz tests found an exception escaping a parser (or a valid file misread), each pinned as a
plain test so the fix stays whatever the random draws of a run. Inputs found in the runtime decoders, netlink and the
network collector are pinned as ``@example`` lines on their property tests instead (they need those tests' fixtures).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodeagent.collectors.conntrack import parse_count
from nodeagent.collectors.filesystem import Mount, parse_mountinfo
from nodeagent.collectors.infiniband import parse_counter, parse_state
from nodeagent.collectors.meminfo import parse_meminfo
from nodeagent.collectors.osrelease import parse_os_release
from nodeagent.collectors.textfile import TextfileError, parse_textfile
from nodeagent.collectors.vmstat import parse_vmstat
from nodeagent.hostfs import ParseError
from nodeagent.ship import TransportError
from nodeagent.ship.lumberjack import decode_ack
from nodeagent.ship.spool import Spool, frame, segment_name
from tests.fuzz.support import Cases

NINES = "9" * 5000  # past int()'s 4300-digit limit: int() raises ValueError, outside any try before the fixes
HUGE = "9" * 400  # an int that float() cannot hold: OverflowError in the collector before the fixes

# (target, call, input, documented error): each raised something else before its fix.
ESCAPES: list[tuple[str, Callable[[Any], Any], Any, type[Exception]]] = [
    ("textfile", lambda t: parse_textfile(t, "/x.prom"), "# HELP \x1c Disks.\n", TextfileError),  # IndexError
    ("textfile", lambda t: parse_textfile(t, "/x.prom"), f"raid_disks {HUGE}\n", TextfileError),  # OverflowError
    ("ib_counter", lambda t: parse_counter(t, "/c"), NINES, ParseError),  # ValueError
    ("ib_state", lambda t: parse_state(t, "/s"), f"{NINES}: ACTIVE\n", ParseError),  # ValueError
    ("conntrack_count", lambda t: parse_count(t, "/n"), NINES, ParseError),  # ValueError
    ("meminfo", parse_meminfo, f"MemTotal: {HUGE} kB\n", ParseError),  # OverflowError in the collector
    ("vmstat", parse_vmstat, f"pgfault {HUGE}\n", ParseError),  # OverflowError in the collector
    ("lumberjack_decode_ack", decode_ack, b"2A\x00", TransportError),  # struct.error
]


@pytest.mark.parametrize(
    ("target", "call", "data", "error"), ESCAPES, ids=[f"{e[0]}-{i}" for i, e in enumerate(ESCAPES)]
)
def test_escape_is_now_the_documented_error(
    cases: Cases, target: str, call: Callable[[Any], Any], data: Any, error: type[Exception]
) -> None:
    """Each input that made an exception escape now raises the parser's documented error."""
    outcome = cases.call(target, call, data, allowed=(error,))
    assert isinstance(outcome.error, error)


def test_mountinfo_with_line_separators_in_a_mount_point(cases: Cases) -> None:
    """
    The kernel escapes only space, tab, newline and backslash in mountinfo; a FUSE mount point a user names with
    U+2028 or \\x1c (both line breaks to ``str.splitlines``) used to split its line and fail the whole collector.
    """
    text = "95 27 0:45 / /home/u/a\u2028b\x1cc rw - fuse.sshfs u@h:/x\\040y rw\n"
    expected = [Mount("0", "45", "/home/u/a\u2028b\x1cc", frozenset({"rw"}), "fuse.sshfs", "u@h:/x y")]
    assert expected == cases.call("mountinfo", parse_mountinfo, text).value


def test_os_release_double_quote_escapes(cases: Cases) -> None:
    """os-release(5) escapes $, `, " and \\ in double quotes "following shell style"; shlex kept the backslash
    before $ and `."""
    text = 'PRETTY_NAME="Acme \\$HOME \\`id\\` \\"q\\" \\\\ \\n"\nNAME=\'a\\$b\'\n'
    got = cases.call("os_release", parse_os_release, text).value
    assert ('Acme $HOME `id` "q" \\ \\n', "a\\$b") == (got.pretty_name, got.name)


def test_spool_open_with_deeply_nested_cursor(cases: Cases, tmp_path: Path) -> None:
    """A cursor file of deeply nested JSON made json.loads raise RecursionError out of Spool.open."""
    (tmp_path / segment_name(1)).write_bytes(frame(b'{"n":1}', 2) + frame(b'{"n":2}', 2))
    (tmp_path / "cursor").write_bytes(b"[" * 5_000)
    spool = Spool(str(tmp_path))
    cases.call("spool_open_cursor", spool.open)
    try:
        assert [b'{"n":1}', b'{"n":2}'] == spool.peek(10, 1 << 20)
        assert "cursor unreadable" in spool.last_error
    finally:
        spool.close()
