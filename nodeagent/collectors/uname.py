"""
Kernel identification from uname(2) and ``/proc/sys/kernel/domainname``.

Families: ``node_uname_info{sysname,release,version,machine,nodename,domainname}`` (gauge with value 1, as
node_exporter types it). Shell equivalent: ``uname -snrvm; cat /proc/sys/kernel/domainname``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import read_text
from nodeagent.metrics import MetricFamily

_LABELS = ("sysname", "release", "version", "machine", "nodename", "domainname")
_HELP = "Labeled system information as provided by the uname system call."


@dataclass(frozen=True, slots=True)
class Uname:
    """The uname fields, domain name included."""

    sysname: str
    release: str
    version: str
    machine: str
    nodename: str
    domainname: str


def parse_uname(uname: os.uname_result, domainname_text: str) -> Uname:
    """
    Combine uname(2)'s result with the text of ``/proc/sys/kernel/domainname``.

    The domain name is kept as the kernel says it, ``(none)`` when unset, as node_exporter reports it.
    """
    return Uname(
        sysname=uname.sysname,
        release=uname.release,
        version=uname.version,
        machine=uname.machine,
        nodename=uname.nodename,
        domainname=domainname_text.rstrip("\n"),
    )


class UnameCollector(BaseCollector):
    """Calls uname(2) and reads the domain name each cycle (the host name can change)."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._domainname_path = ctx.paths.proc("sys", "kernel", "domainname")

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the single ``node_uname_info`` sample."""
        try:
            domainname = read_text(self._domainname_path)
        except FileNotFoundError:
            domainname = ""  # a procfs without the sysctl: report no domain rather than fail
        u = parse_uname(os.uname(), domainname)
        labels = (u.sysname, u.release, u.version, u.machine, u.nodename, u.domainname)
        return (MetricFamily("node_uname_info", "gauge", _HELP, _LABELS, ((labels, 1.0),)),)


SPEC = CollectorSpec(
    name="uname",
    description="Kernel name, release, version, machine, node name and domain name.",
    config_model=CollectorConfig,
    factory=UnameCollector,
)
