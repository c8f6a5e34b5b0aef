"""
InfiniBand (and RoCE) adapters from ``/sys/class/infiniband/<device>``: identity, port state and rate, and the
port counters of ``ports/<port>/counters`` (and ``counters_ext`` on kernels before 4.5).

Families: ``node_infiniband_info{device,board_id,firmware_version,hca_type}``, and per ``{device,port}`` the
gauges ``node_infiniband_state_id``, ``_physical_state_id``, ``_rate_bytes_per_second`` and the counters of
``_COUNTERS`` (node_exporter 1.5 names). ``port_rcv_data`` and ``port_xmit_data`` count 4-octet words, so they are
multiplied by 4 into bytes. ``hw_counters`` are not read: node_exporter 1.5 exports none of them.
Shell equivalent: ``grep -r . /sys/class/infiniband/*/ports/*/{state,phys_state,rate,counters}``.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.hostfs import ParseError, kernel_int, read_text
from nodeagent.metrics import MetricFamily, counter, gauge

_NO_DEVICE_HINT = (
    "no InfiniBand or RDMA adapter on this host, or its driver (mlx5_ib, mlx4_ib, irdma, ...) is not loaded"
)

# A counter file that the kernel lists but whose read fails this way is skipped, as node_exporter skips it.
_SKIPPED_READ_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL})

# The driver's answer when the adapter has no performance management agent (linux-rdma, before 4.19).
_NO_PMA = "N/A (no PMA)"

_LABELS = ("device", "port")
_INFO_LABELS = ("device", "board_id", "firmware_version", "hca_type")

# (directory, file, family suffix, multiplier, help) in exposition order. The data counters count 4-octet words.
_COUNTERS: tuple[tuple[str, str, str, int, str], ...] = (
    ("counters_ext", "port_multicast_rcv_packets", "legacy_multicast_packets_received_total", 1,
     "Number of multicast packets received."),
    ("counters_ext", "port_multicast_xmit_packets", "legacy_multicast_packets_transmitted_total", 1,
     "Number of multicast packets transmitted."),
    ("counters_ext", "port_rcv_data_64", "legacy_data_received_bytes_total", 4,
     "Number of data octets received on all links."),
    ("counters_ext", "port_rcv_packets_64", "legacy_packets_received_total", 1,
     "Number of data packets received on all links."),
    ("counters_ext", "port_unicast_rcv_packets", "legacy_unicast_packets_received_total", 1,
     "Number of unicast packets received."),
    ("counters_ext", "port_unicast_xmit_packets", "legacy_unicast_packets_transmitted_total", 1,
     "Number of unicast packets transmitted."),
    ("counters_ext", "port_xmit_data_64", "legacy_data_transmitted_bytes_total", 4,
     "Number of data octets transmitted on all links."),
    # node_exporter's help says "received" here too; kept as the family's meaning, not its typo.
    ("counters_ext", "port_xmit_packets_64", "legacy_packets_transmitted_total", 1,
     "Number of data packets transmitted on all links."),
    ("counters", "excessive_buffer_overrun_errors", "excessive_buffer_overrun_errors_total", 1,
     "Number of times that OverrunErrors consecutive flow control update periods occurred, each having at least "
     "one overrun error."),
    ("counters", "link_downed", "link_downed_total", 1,
     "Number of times the link failed to recover from an error state and went down."),
    ("counters", "link_error_recovery", "link_error_recovery_total", 1,
     "Number of times the link successfully recovered from an error state."),
    ("counters", "local_link_integrity_errors", "local_link_integrity_errors_total", 1,
     "Number of times that the count of local physical errors exceeded the threshold specified by LocalPhyErrors."),
    ("counters", "multicast_rcv_packets", "multicast_packets_received_total", 1,
     "Number of multicast packets received (including errors)."),
    ("counters", "multicast_xmit_packets", "multicast_packets_transmitted_total", 1,
     "Number of multicast packets transmitted (including errors)."),
    ("counters", "port_rcv_constraint_errors", "port_constraint_errors_received_total", 1,
     "Number of packets received on the switch physical port that are discarded."),
    ("counters", "port_xmit_constraint_errors", "port_constraint_errors_transmitted_total", 1,
     "Number of packets not transmitted from the switch physical port."),
    ("counters", "port_rcv_data", "port_data_received_bytes_total", 4,
     "Number of data octets received on all links."),
    ("counters", "port_xmit_data", "port_data_transmitted_bytes_total", 4,
     "Number of data octets transmitted on all links."),
    ("counters", "port_rcv_discards", "port_discards_received_total", 1,
     "Number of inbound packets discarded by the port because the port is down or congested."),
    ("counters", "port_xmit_discards", "port_discards_transmitted_total", 1,
     "Number of outbound packets discarded by the port because the port is down or congested."),
    ("counters", "port_rcv_errors", "port_errors_received_total", 1,
     "Number of packets containing an error that were received on this port."),
    ("counters", "port_rcv_packets", "port_packets_received_total", 1,
     "Number of packets received on all VLs by this port (including errors)."),
    ("counters", "port_xmit_packets", "port_packets_transmitted_total", 1,
     "Number of packets transmitted on all VLs from this port (including errors)."),
    ("counters", "port_xmit_wait", "port_transmit_wait_total", 1,
     "Number of ticks during which the port had data to transmit but no data was sent during the entire tick."),
    ("counters", "unicast_rcv_packets", "unicast_packets_received_total", 1,
     "Number of unicast packets received (including errors)."),
    ("counters", "unicast_xmit_packets", "unicast_packets_transmitted_total", 1,
     "Number of unicast packets transmitted (including errors)."),
    ("counters", "port_rcv_remote_physical_errors", "port_receive_remote_physical_errors_total", 1,
     "Number of packets marked with the EBP (End of Bad Packet) delimiter received on the port."),
    ("counters", "port_rcv_switch_relay_errors", "port_receive_switch_relay_errors_total", 1,
     "Number of packets that could not be forwarded by the switch."),
    ("counters", "symbol_error", "symbol_error_total", 1,
     "Number of minor link errors detected on one or more physical lanes."),
    ("counters", "VL15_dropped", "vl15_dropped_total", 1,
     "Number of incoming VL15 packets dropped due to resource limitations."),
)  # fmt: skip

_STATE_HELP = "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)."
_PHYS_STATE_HELP = (
    "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, 4: shift, 5: link up, "
    "6: link error recover, 7: phytest)."
)


@dataclass(frozen=True, slots=True)
class InfinibandPort:
    """One port: state ids, rate in bytes per second, and ``(file, value)`` of each readable counter (in bytes
    for the data counters)."""

    port: int
    state_id: int
    physical_state_id: int
    rate_bytes_per_second: int
    counters: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class InfinibandDevice:
    """One adapter (``mlx5_0``): identity strings (empty where the driver has no such file) and its ports."""

    name: str
    board_id: str
    firmware_version: str
    hca_type: str
    ports: tuple[InfinibandPort, ...]


def _is_uint(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _uint(text: str) -> int | None:
    """``text`` as a non-negative kernel value (ASCII digits, at most u64), else None."""
    if not _is_uint(text):
        return None
    try:
        return kernel_int(text)
    except ValueError:  # past u64, or so long that int() refuses it
        return None


def parse_state(text: str, source: str) -> int:
    """
    Parse a port ``state`` or ``phys_state`` file (``4: ACTIVE``, ``5: LinkUp``) into its numeric id.

    Raises:
        ParseError: not ``<id>: <name>``; the message names ``source`` and the content.
    """
    parts = text.strip().split(":")
    state = _uint(parts[0].strip()) if len(parts) == 2 else None
    if state is None:
        raise ParseError(f"{source}: line 1: expected '<id>: <NAME>', got {text.strip()[:40]!r}")
    return state


def parse_rate(text: str, source: str) -> int:
    """
    Parse a port ``rate`` file (``200 Gb/sec (4X HDR)``) into bytes per second. Like node_exporter, the number is
    read at single (32-bit float) precision before the conversion, so fractional rates round the same way.

    Raises:
        ParseError: no ``<number> <unit>`` at the start; the message names ``source`` and the content.
    """
    number, sep, _ = text.strip().partition(" ")
    try:
        if not sep:
            raise ValueError(number)
        gbits = struct.unpack("f", struct.pack("f", float(number)))[0]
    except (ValueError, OverflowError):
        raise ParseError(f"{source}: line 1: expected '<number> Gb/sec ...', got {text.strip()!r}") from None
    if not 0 <= gbits < math.inf:
        raise ParseError(f"{source}: line 1: not a finite non-negative rate: {text.strip()!r}")
    return int(gbits * 125_000_000)


def parse_counter(text: str, source: str) -> int | None:
    """
    Parse one counter file: a decimal integer, or ``None`` for ``N/A (no PMA)`` (adapters without a performance
    management agent, on kernels before 4.19).

    Raises:
        ParseError: anything else; the message names ``source`` and the content.
    """
    value = text.strip()
    number = _uint(value)
    if number is not None:
        return number
    if _NO_PMA in value:
        return None
    raise ParseError(f"{source}: line 1: expected a non-negative integer or {_NO_PMA!r}, got {value[:40]!r}")


def _read_optional(path: str) -> str:
    try:
        return read_text(path).strip()
    except FileNotFoundError:
        return ""


def read_port(path: str, port: int) -> InfinibandPort:
    """Read one ``ports/<n>`` directory (blocking: a counter read may query the adapter's firmware)."""
    state = parse_state(read_text(os.path.join(path, "state")), os.path.join(path, "state"))
    phys = parse_state(read_text(os.path.join(path, "phys_state")), os.path.join(path, "phys_state"))
    rate = parse_rate(read_text(os.path.join(path, "rate")), os.path.join(path, "rate"))
    counters: list[tuple[str, int]] = []
    present = {d: _listdir(os.path.join(path, d)) for d in ("counters", "counters_ext")}
    for directory, file, _, multiplier, _ in _COUNTERS:
        if file not in present[directory]:
            continue
        file_path = os.path.join(path, directory, file)
        try:
            text = read_text(file_path)
        except OSError as exc:
            if exc.errno in _SKIPPED_READ_ERRNOS:
                continue
            raise
        value = parse_counter(text, file_path)
        if value is not None:
            counters.append((file, value * multiplier))
    return InfinibandPort(port, state, phys, rate, tuple(counters))


def _listdir(path: str) -> frozenset[str]:
    """Names in a directory, empty if it does not exist (``counters_ext`` before 4.5; ``counters`` on irdma)."""
    try:
        return frozenset(os.listdir(path))
    except FileNotFoundError:
        return frozenset()


def read_device(class_dir: str, name: str) -> InfinibandDevice:
    """Read one ``/sys/class/infiniband/<name>`` device and all its ports."""
    path = os.path.join(class_dir, name)
    ports_dir = os.path.join(path, "ports")
    ports: list[InfinibandPort] = []
    for entry in os.listdir(ports_dir):
        if not _is_uint(entry):
            raise ParseError(f"{ports_dir}: {entry!r} is not a port number")
        ports.append(read_port(os.path.join(ports_dir, entry), int(entry)))
    ports.sort(key=lambda p: p.port)
    return InfinibandDevice(
        name,
        board_id=_read_optional(os.path.join(path, "board_id")),
        firmware_version=_read_optional(os.path.join(path, "fw_ver")),
        hca_type=_read_optional(os.path.join(path, "hca_type")),
        ports=tuple(ports),
    )


def infiniband_families(devices: Sequence[InfinibandDevice]) -> list[MetricFamily]:
    """The families of a set of devices; a counter no port has is left out."""
    info = gauge(
        "node_infiniband_info", "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.", _INFO_LABELS
    )
    state = gauge("node_infiniband_state_id", _STATE_HELP, _LABELS)
    phys = gauge("node_infiniband_physical_state_id", _PHYS_STATE_HELP, _LABELS)
    rate = gauge("node_infiniband_rate_bytes_per_second", "Maximum signal transfer rate.", _LABELS)
    counters = {file: counter(f"node_infiniband_{suffix}", help_, _LABELS) for _, file, suffix, _, help_ in _COUNTERS}
    for device in devices:
        info.add((device.name, device.board_id, device.firmware_version, device.hca_type), 1.0)
        for port in device.ports:
            labels = (device.name, str(port.port))
            state.add(labels, float(port.state_id))
            phys.add(labels, float(port.physical_state_id))
            rate.add(labels, float(port.rate_bytes_per_second))
            for file, value in port.counters:
                counters[file].add(labels, float(value))
    families = [b.build() for b in (info, state, phys, rate, *counters.values())]
    return [f for f in families if f.samples]


class InfinibandCollector(BaseCollector):
    """Reads every device under ``class/infiniband`` each cycle, in a worker thread."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._dir = ctx.paths.sys("class", "infiniband")

    def collect_sync(self) -> list[MetricFamily]:
        """Read all devices and build the families."""
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            raise NoDataError(f"{self._dir} does not exist", _NO_DEVICE_HINT) from None
        if not names:
            raise NoDataError(f"{self._dir} has no devices", _NO_DEVICE_HINT)
        return infiniband_families([read_device(self._dir, name) for name in names])

    async def collect(self) -> Sequence[MetricFamily]:
        """Counter reads can wait on the adapter's firmware (a MAD round trip each), so they run off the loop."""
        return await asyncio.to_thread(self.collect_sync)


SPEC = CollectorSpec(
    name="infiniband",
    description="InfiniBand port state, rate and counters from /sys/class/infiniband.",
    config_model=CollectorConfig,
    factory=InfinibandCollector,
)
