"""
A minimal FUSE file system served straight over ``/dev/fuse`` (the kernel's FUSE protocol, 7.x, as in
``include/uapi/linux/fuse.h``; no libfuse), for the hung-filesystem fault.

It serves an empty root directory and answers ``statfs`` with the fixed numbers in ``STATFS``, so a test can check
the agent's values. Stopping the daemon (SIGSTOP) makes every ``statfs`` on the mount block in the kernel
(``request_wait_answer``) until it is continued (SIGCONT): the "statfs that never returns" of a hung NFS or FUSE
server. Killing the daemon aborts the connection (callers then get ENOTCONN). SIGTERM detaches the mount and exits.

Run as ``python3 -m tests.faults.fuse MOUNTPOINT``: it mounts ``fuse.natest`` there (root only), prints ``ready``
once the kernel's INIT is answered, and serves until the mount goes away.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import struct
import sys
from types import FrameType
from typing import TextIO

# (blocks, bfree, bavail, files, ffree, bsize, namelen, frsize): what statfs on the mount answers.
STATFS = (1000, 400, 300, 500, 123, 4096, 255, 4096)
FSTYPE = "fuse.natest"

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, STATFS_OP, INIT = 1, 2, 3, 17, 26
OPENDIR, READDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 27, 28, 29, 36, 38, 42
NO_REPLY = frozenset({FORGET, INTERRUPT, BATCH_FORGET})

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (the rest is not needed)
# fuse_init_out: major, minor, max_readahead, flags, max_background, congestion_threshold, max_write, time_gran,
# max_pages, map_alignment, flags2, max_stack_depth; padded to the 64 bytes of the structure.
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
# fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then fuse_attr: ino, size, blocks, atime, mtime, ctime,
# atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags.
ATTR_OUT = struct.Struct("<QII" + "QQQQQQ" + "IIIIIIIIII")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # fuse_kstatfs: blocks..ffree, bsize, namelen, frsize, padding, spare
OPEN_OUT = struct.Struct("<QIi")  # fh, open_flags, backing_id

PROTOCOL = (7, 31)
MAX_WRITE = 1 << 16
MS_NOSUID, MS_NODEV, MNT_DETACH = 0x2, 0x4, 0x2


def mount(mountpoint: str, fd: int) -> None:
    """mount(2) a FUSE file system served through ``fd`` (an open ``/dev/fuse``) at ``mountpoint``."""
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode={stat.S_IFDIR:o},user_id=0,group_id=0".encode()
    if libc.mount(b"natest-fuse", mountpoint.encode(), FSTYPE.encode(), MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {FSTYPE} on {mountpoint}: {os.strerror(err)}")


def detach(mountpoint: str) -> None:
    """umount2(MNT_DETACH): the lazy unmount of ``umount -l``; a mount already gone is fine."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(mountpoint.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        err = ctypes.get_errno()
        raise OSError(err, f"umount -l {mountpoint}: {os.strerror(err)}")


def reply(fd: int, unique: int, payload: bytes = b"", error: int = 0) -> None:
    """Answer request ``unique``: a payload, or a negative errno with none."""
    os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload)


def answer(opcode: int, nodeid: int, body: bytes) -> tuple[bytes, int]:
    """The payload (or errno) for one request."""
    if opcode == INIT:
        major, minor, max_readahead, _flags = INIT_IN.unpack_from(body)
        if major != PROTOCOL[0]:
            return b"", errno.EPROTO
        ours = min(minor, PROTOCOL[1])
        return INIT_OUT.pack(PROTOCOL[0], ours, max_readahead, 0, 16, 12, MAX_WRITE, 1, 0, 0, 0, 0), 0
    if opcode == GETATTR and nodeid == 1:
        mode = stat.S_IFDIR | 0o755
        return ATTR_OUT.pack(1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, mode, 2, 0, 0, 0, 4096, 0), 0
    if opcode == STATFS_OP:
        return STATFS_OUT.pack(*STATFS, 0), 0
    if opcode == OPENDIR:
        return OPEN_OUT.pack(0, 0, 0), 0
    if opcode in (READDIR, RELEASEDIR):
        return b"", 0  # an empty directory
    if opcode in (LOOKUP, GETATTR):
        return b"", errno.ENOENT
    return b"", errno.ENOSYS


def serve(fd: int, out: TextIO = sys.stdout) -> None:
    """Answer requests until the file system is unmounted (the read fails with ENODEV)."""
    ready = False
    while True:
        try:
            request = os.read(fd, MAX_WRITE + 4096)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the request was interrupted before it was read: the next one
                continue
            if exc.errno == errno.ENODEV:
                return
            raise
        _len, opcode, unique, nodeid, *_rest = IN_HEADER.unpack_from(request)
        if opcode == DESTROY:
            return
        if opcode in NO_REPLY:
            continue
        payload, error = answer(opcode, nodeid, request[IN_HEADER.size :])
        try:
            reply(fd, unique, payload, error)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the caller was interrupted (killed) meanwhile
                raise
        if opcode == INIT and not ready:
            ready = True
            print("ready", file=out, flush=True)


def main(argv: list[str]) -> int:
    """Mount at ``argv[0]`` and serve; SIGTERM detaches the mount and exits."""
    (mountpoint,) = argv
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mount(mountpoint, fd)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        detach(mountpoint)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        serve(fd)
    finally:
        detach(mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
