#!/usr/bin/env python3
"""
CPU per interface of a link dump and per socket of a TCP state count: nodeagent.sources.netlink next to pyroute2,
in the same process and run.

Creates a bench-only network namespace ``nodeagent-bench-<pid>`` holding ``--pairs`` veth pairs and
``--sockets`` TCP sockets (listen + connect pairs on its loopback), moves the main thread into it so that both
libraries see exactly the same objects, and measures utime + stime (``time.process_time``, which includes the
kernel's work behind the syscalls) per call divided by the number of interfaces or sockets. Deleting the namespace
removes every interface; it is deleted on every exit. Needs root. Run: ``python3 bench/netlink_micro.py``.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import gc
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from nodeagent.sources.netlink import (
    TCP_STATES,
    DiagSocket,
    RouteSocket,
    parse_diag_states,
    parse_link_messages,
)

CLONE_NEWNET = 0x40000000


def cpu_per_call(fn: Callable[[], object], repeat: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the process CPU seconds per call of ``repeat`` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        for _ in range(repeat):
            fn()
        samples.append((time.process_time() - start) / repeat)
    return statistics.median(samples)


def enter_netns(path: str) -> None:
    """Move the calling (main) thread into the namespace; threads it starts later are created there too."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


def raw_dump(sock: socket.socket, mtype: int, payload: bytes) -> bytes:
    """The concatenated datagrams of one dump, for timing the parser alone."""
    sock.sendto(struct.pack("=IHHII", 16 + len(payload), mtype, 0x301, 1, 0) + payload, (0, 0))
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        chunks.append(data)
        pos = 0
        while pos < len(data):
            length, kind = struct.unpack_from("=IH", data, pos)
            if kind == 3:
                return b"".join(chunks)
            pos += (length + 3) & ~3


def open_tcp(count: int) -> list[socket.socket]:
    """About ``count`` TCP sockets: one listener and connected client/server pairs on 127.0.0.1."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    keep = [listener]
    for _ in range((count - 1) // 2):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        keep += [client, server]
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100, help="veth pairs (two interfaces each)")
    parser.add_argument("--sockets", type=int, default=10_000, help="TCP sockets to hold open")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("netlink_micro.py needs root (network namespaces)")

    ns = f"nodeagent-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    atexit.register(subprocess.run, ["ip", "netns", "del", ns], check=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    batch = "link set lo up\n" + "".join(
        f"link add nb{i}a type veth peer name nb{i}b\nlink set nb{i}a up\nlink set nb{i}b up\n"
        for i in range(args.pairs)
    )
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    enter_netns(f"/run/netns/{ns}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.sockets + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    from pyroute2 import DiagSocket as PyrouteDiag
    from pyroute2 import IPRoute

    rows: list[tuple[str, str, str, str]] = []
    with RouteSocket() as rs, IPRoute() as ipr:
        n_links = len(rs.dump_links())
        assert len(ipr.get_links()) == n_links
        ours = cpu_per_call(rs.dump_links, 50) / n_links
        theirs = cpu_per_call(ipr.get_links, 3, rounds=3) / n_links
        raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        raw.bind((0, 0))
        data = raw_dump(raw, 18, struct.pack("=BxHiII", 0, 0, 0, 0, 0))
        raw.close()
        parse_only = cpu_per_call(lambda: parse_link_messages(data), 50) / n_links
    rows.append(("link dump, per interface", f"{ours * 1e6:.1f}", f"{theirs * 1e6:.1f}", f"{theirs / ours:.0f}x"))
    rows.append(("  of which parsing (no syscalls)", f"{parse_only * 1e6:.1f}", "", ""))

    keep = open_tcp(args.sockets)
    try:
        with DiagSocket() as ds, PyrouteDiag() as pds:
            pds.bind()
            counts = ds.tcp_states()
            n_sockets = sum(counts.values())
            assert counts["listen"] >= 1 and counts["established"] >= len(keep) - 1, counts

            def pyroute2_states() -> dict[str, int]:
                result = dict.fromkeys(TCP_STATES.values(), 0)
                for family in (socket.AF_INET, socket.AF_INET6):
                    for msg in pds.get_sock_stats(family=family, states=0xFFFFFFFF & ~(1 << 13)):
                        name = TCP_STATES.get(msg["idiag_state"])
                        if name is not None:
                            result[name] += 1
                return result

            assert pyroute2_states() == counts
            ours = cpu_per_call(ds.tcp_states, 10) / n_sockets
            theirs = cpu_per_call(pyroute2_states, 1, rounds=3) / n_sockets
            raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
            raw.bind((0, 0))
            data = raw_dump(raw, 20, struct.pack("=BBBxI48x", socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFDFFF))
            raw.close()
            parse_only = cpu_per_call(lambda: parse_diag_states(data), 20) / n_sockets
    finally:
        for s in keep:
            s.close()
    rows.append(("TCP state count, per socket", f"{ours * 1e6:.2f}", f"{theirs * 1e6:.2f}", f"{theirs / ours:.0f}x"))
    rows.append(("  of which parsing (no syscalls)", f"{parse_only * 1e6:.2f}", "", ""))

    print(
        f"netlink micro-benchmark: {n_links} interfaces ({args.pairs} veth pairs + lo), {n_sockets} TCP sockets; "
        f"kernel {os.uname().release}, Python {sys.version.split()[0]}, CPU = utime + stime per call\n"
    )
    print("| measure | nodeagent µs | pyroute2 µs | pyroute2 / nodeagent |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
