"""
Coverage-guided fuzzing of the byte-level parsers with atheris (libFuzzer), for long runs outside pytest: the same
property as the Hypothesis tests (a value or the documented error), with mutations steered by which branches of the
parser a case reached. Not part of the test suite and not a dependency; see docs/fuzzing.md for when to use it.

    python3 -m venv --system-site-packages /tmp/atheris && /tmp/atheris/bin/pip install atheris
    PYTHONPATH=. /tmp/atheris/bin/python tests/fuzz/atheris_harness.py TARGET -max_total_time=300

The corpus starts from the seeds the Hypothesis tests use, written to ``$TMPDIR/nodeagent-atheris/TARGET``, which
libFuzzer then grows. A crash prints the input and saves it as ``crash-<sha1>``; pin it as a regression test.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional, not a dependency

with atheris.instrument_imports(include=["nodeagent"]):
    from nodeagent.collectors.filesystem import parse_mountinfo
    from nodeagent.collectors.osrelease import parse_os_release
    from nodeagent.collectors.procstat import parse_proc_stat
    from nodeagent.collectors.textfile import TextfileError, parse_textfile
    from nodeagent.hostfs import ParseError
    from nodeagent.ship.spool import record_at, scan_records
    from nodeagent.sources.cgroupfs import flat_values, parse_io_stat, parse_psi_totals
    from nodeagent.sources.netlink import NetlinkError, parse_diag_states, parse_link_messages
    from nodeagent.workloads import classify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _scan(data: bytes) -> None:
    found = scan_records(data)
    assert all(record_at(data, offset) is not None for offset in found.offsets)


# name -> (call on the fuzzer's bytes, documented errors, seed files under tests/fixtures)
TARGETS: dict[str, tuple[Callable[[bytes], Any], tuple[type[Exception], ...], tuple[str, ...]]] = {
    "procstat": (lambda d: parse_proc_stat(_text(d)), (ParseError,), ("proc/stat",)),
    "mountinfo": (lambda d: parse_mountinfo(_text(d)), (ParseError,), ()),
    "os_release": (lambda d: parse_os_release(_text(d)), (ParseError,), ("rootfs/etc/os-release",)),
    "textfile": (lambda d: parse_textfile(_text(d), "/x.prom"), (TextfileError,), ()),
    "cgroup_flat_keyed": (
        lambda d: flat_values(d, (b"usage_usec", b"nr_throttled", b"anon"), "cpu.stat"),
        (ParseError,),
        ("cgroup/v2-systemd/kubepods.slice/kubepods-pod9a8b7c6d_5e4f_4a3b_8c2d_1e0f9a8b7c6d.slice/cpu.stat",),
    ),
    "cgroup_io_stat": (lambda d: parse_io_stat(d, "io.stat"), (ParseError,), ()),
    "cgroup_psi": (lambda d: parse_psi_totals(d, "cpu.pressure"), (ParseError,), ()),
    "netlink_links": (
        lambda d: parse_link_messages(d, seq=7),
        (ParseError, NetlinkError),
        ("netlink/links_dump.bin", "netlink/link_events.bin"),
    ),
    "netlink_diag": (lambda d: parse_diag_states(d, seq=7), (ParseError, NetlinkError), ("netlink/diag_tcp4.bin",)),
    "spool_scan": (_scan, (), ()),
    "classify": (lambda d: classify(_text(d)), (), ()),
}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer options]; targets: {', '.join(TARGETS)}")
    call, allowed, seeds = TARGETS[name]
    corpus = Path(tempfile.gettempdir()) / "nodeagent-atheris" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / Path(seed).name).write_bytes((FIXTURES / seed).read_bytes())

    def one_input(data: bytes) -> None:
        with contextlib.suppress(*allowed):
            call(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
