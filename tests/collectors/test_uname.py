"""The uname collector."""

from __future__ import annotations

import os
import subprocess

from nodeagent.collectors import uname
from nodeagent.collectors.uname import Uname, parse_uname
from nodeagent.hostfs import HostPaths

from .conftest import Collect, read_host

LABELS = ("sysname", "release", "version", "machine", "nodename", "domainname")


def test_parse_uname_keeps_kernel_domainname() -> None:
    """The domain name keeps the kernel's ``(none)`` and loses only the trailing newline."""
    result = os.uname_result(("Linux", "gpu-07", "6.8.0-45-generic", "#45-Ubuntu SMP", "x86_64"))
    expected = Uname("Linux", "6.8.0-45-generic", "#45-Ubuntu SMP", "x86_64", "gpu-07", "(none)")
    assert expected == parse_uname(result, "(none)\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """One gauge sample with value 1 carries uname(2)'s fields and the fixture's domain name."""
    families = await collect(uname.SPEC, fixture_paths)
    family = families["node_uname_info"]
    u = os.uname()
    expected = (
        "gauge",
        "Labeled system information as provided by the uname system call.",
        LABELS,
        (((u.sysname, u.release, u.version, u.machine, u.nodename, "(none)"), 1.0),),
    )
    assert expected == (family.type, family.help, family.labelnames, family.samples)


async def test_absent_domainname_is_empty(empty_paths: HostPaths, collect: Collect) -> None:
    """Without the domainname sysctl file the collector still reports, with an empty domain name."""
    families = await collect(uname.SPEC, empty_paths)
    assert "" == families["node_uname_info"].samples[0][0][5]


async def test_live_matches_uname_command(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the labels equal what uname(1) prints and the domainname sysctl says."""
    families = await collect(uname.SPEC, live_paths)
    labels = dict(zip(LABELS, families["node_uname_info"].samples[0][0], strict=True))

    def run(flag: str) -> str:
        return subprocess.run(["uname", flag], check=True, capture_output=True, text=True).stdout.rstrip("\n")

    expected = {
        "sysname": run("-s"),
        "release": run("-r"),
        "version": run("-v"),
        "machine": run("-m"),
        "nodename": run("-n"),
        "domainname": read_host("/proc/sys/kernel/domainname").rstrip("\n"),
    }
    assert expected == labels
