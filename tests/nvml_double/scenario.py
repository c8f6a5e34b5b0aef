"""Scenario files for the NVML test double: dataclasses with H100-like defaults that render the line format the C
library reads (see README.md next to this file).

A value set to ``None`` is left out of the file, and the double answers the matching NVML call with
NOT_SUPPORTED, as real NVML does for a feature a board lacks (fans on an SXM board, page retirement on Hopper).

``Scenario.write(path)`` replaces the file atomically (write to a temporary name, then rename): the double
re-reads it on the next call, so a test can change values, lose a GPU and restore it while a process runs.
"""

from __future__ import annotations

import enum
import itertools
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCENARIO_ENV = "NVML_DOUBLE_SCENARIO"

GiB = 1 << 30
MiB = 1 << 20

# The same stable UUIDs as the PodResources double (tests/doubles/podresources.py), so device ids join.
_UUID_NS = uuid.UUID("6f1d3f4e-3b7a-4c55-9a39-0c4b8f0e2a11")

# NVML return codes (pynvml NVML_ERROR_*), for error injection.
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
UNKNOWN = 999

XID_CRITICAL_ERROR = 0x8
# SingleBitEcc | DoubleBitEcc | PState | XidCriticalError | Clock
DEFAULT_SUPPORTED_EVENTS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10

# A DGX/HGX H100 board: PCI bus of each of the eight SXM GPUs.
H100_PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEM_TOTAL = 81559 * MiB
H100_MEM_RESERVED = 541 * MiB


def gpu_uuid(index: int) -> str:
    """A stable GPU UUID, ``GPU-<uuid>`` (equal to ``tests.doubles.podresources.gpu_uuid``)."""
    return f"GPU-{uuid.uuid5(_UUID_NS, f'gpu-{index}')}"


def mig_uuid(gpu_index: int, instance: int) -> str:
    """A stable MIG device UUID, ``MIG-<uuid>`` (equal to ``tests.doubles.podresources.mig_uuid``)."""
    return f"MIG-{uuid.uuid5(_UUID_NS, f'mig-{gpu_index}-{instance}')}"


class ValueType(enum.Enum):
    """``nvmlValueType_t`` of a field value, spelled as the scenario prefix."""

    DOUBLE = "d"
    UNSIGNED_INT = "ui"
    UNSIGNED_LONG = "ul"
    UNSIGNED_LONG_LONG = "ull"
    SIGNED_LONG_LONG = "sll"
    SIGNED_INT = "si"
    UNSIGNED_SHORT = "us"


@dataclass
class Process:
    """A running process as NVML lists it. ``used_bytes=None`` is NVML_VALUE_NOT_AVAILABLE (pynvml: None)."""

    pid: int
    used_bytes: int | None = 1 * GiB
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None

    def render(self) -> str:
        used = "na" if self.used_bytes is None else str(self.used_bytes)
        line = f"{self.pid} {used}"
        if self.gpu_instance_id is not None or self.compute_instance_id is not None:
            gi = 0xFFFFFFFF if self.gpu_instance_id is None else self.gpu_instance_id
            ci = 0xFFFFFFFF if self.compute_instance_id is None else self.compute_instance_id
            line += f" {gi} {ci}"
        return line


@dataclass
class ProcUtil:
    """One ``nvmlProcessUtilizationSample_t``; returned when ``timestamp_us`` > the caller's lastSeenTimeStamp."""

    pid: int
    timestamp_us: int
    sm: int
    mem: int
    enc: int = 0
    dec: int = 0


@dataclass
class Field:
    """A field value for ``nvmlDeviceGetFieldValues``; ``scope_id=None`` answers every scope.

    Without ``value_type`` an int is UNSIGNED_LONG_LONG (SIGNED_LONG_LONG if negative), a float DOUBLE.
    """

    field_id: int
    value: int | float
    scope_id: int | None = None
    value_type: ValueType | None = None

    def render(self) -> str:
        vt = self.value_type
        if vt is None:
            if isinstance(self.value, float):
                vt = ValueType.DOUBLE
            else:
                vt = ValueType.SIGNED_LONG_LONG if self.value < 0 else ValueType.UNSIGNED_LONG_LONG
        value = repr(float(self.value)) if vt is ValueType.DOUBLE else str(int(self.value))
        scope = "" if self.scope_id is None else f" {self.scope_id}"
        return f"{self.field_id}{scope} {vt.value}:{value}"


@dataclass
class FieldError:
    """A field whose entry comes back with its own ``nvmlReturn`` (the call itself succeeds)."""

    field_id: int
    ret: int = NOT_SUPPORTED
    scope_id: int | None = None


@dataclass
class Xid:
    """A queued Xid critical-error event; each ``seq`` is delivered once to every event set registered for it."""

    seq: int
    xid: int
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass
class MigDevice:
    """A MIG device in ``slot`` (the index of ``nvmlDeviceGetMigDeviceHandleByIndex``); 1g.10gb by default.

    ``uuid=None`` derives ``mig_uuid(gpu index, slot)``; ``gpu_instance_id=None`` uses ``7 + slot`` (the ids of
    a 7 x 1g.10gb layout).
    """

    slot: int
    uuid: str | None = None
    name: str | None = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = 0
    mem_total: int | None = 9984 * MiB
    mem_used: int | None = 13 * MiB
    mem_free: int | None = None
    mem_reserved: int | None = None
    processes: list[Process] = field(default_factory=list)
    graphics_processes: list[Process] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def render(self, gpu_index: int) -> list[str]:
        p = f"device {gpu_index} mig {self.slot}"
        uid = self.uuid if self.uuid is not None else mig_uuid(gpu_index, self.slot)
        gi = self.gpu_instance_id if self.gpu_instance_id is not None else 7 + self.slot
        lines = [f"{p} uuid {uid}", f"{p} gi {gi}"]
        if self.name is not None:
            lines.append(f"{p} name {_text(self.name)}")
        if self.compute_instance_id is not None:
            lines.append(f"{p} ci {self.compute_instance_id}")
        for key in ("mem_total", "mem_used", "mem_free", "mem_reserved"):
            value = getattr(self, key)
            if value is not None:
                lines.append(f"{p} {key} {value}")
        lines += [f"{p} process {proc.render()}" for proc in self.processes]
        lines += [f"{p} graphics_process {proc.render()}" for proc in self.graphics_processes]
        lines += [f"{p} error {fn} {code}" for fn, code in self.errors.items()]
        return lines


@dataclass
class Gpu:
    """One physical GPU with H100 SXM5 80GB defaults at idle. Derived defaults use its index in the scenario:
    ``uuid`` (``gpu_uuid(index)``), ``serial``, ``pci_bus_id`` and ``minor``.

    ``errors`` maps a function name (or ``"*"``) to an NVML return code for every call on this GPU and its MIG
    devices, e.g. ``{"*": GPU_IS_LOST}``; ``delays`` maps a function name to milliseconds; ``hangs`` names
    functions (or ``"*"``) whose calls on this GPU block until a scenario without the rule is written.
    """

    uuid: str | None = None
    name: str | None = H100_NAME
    serial: str | None = None
    pci_bus_id: str | None = None
    pci_device_id: int | None = 0x233010DE
    pci_subsystem_id: int | None = 0x16C110DE
    minor: int | None = None
    persistence: int | None = 1
    compute_mode: int | None = 0
    util_gpu: int | None = 0
    util_mem: int | None = 0
    encoder: tuple[int, int] | None = (0, 167000)
    decoder: tuple[int, int] | None = (0, 167000)
    mem_total: int | None = H100_MEM_TOTAL
    mem_reserved: int | None = H100_MEM_RESERVED
    mem_used: int | None = 4 * MiB
    mem_free: int | None = None  # derived by the double: total - reserved - used
    power_mw: int | None = 69_000
    power_limit_mw: int | None = 700_000
    enforced_power_limit_mw: int | None = 700_000
    energy_mj: int | None = 1_234_567_890
    temp_gpu: int | None = 31
    temp_thresholds: dict[int, int] = field(default_factory=lambda: {0: 92, 1: 89, 2: 95, 3: 87})
    clocks: dict[int, int] = field(default_factory=lambda: {0: 345, 1: 345, 2: 2619, 3: 765})
    max_clocks: dict[int, int] = field(default_factory=lambda: {0: 1980, 1: 1980, 2: 2619, 3: 1545})
    pstate: int | None = 0
    fans: list[int] = field(default_factory=list)  # SXM boards have none: fan speed is NOT_SUPPORTED
    num_fans: int | None = None
    clocks_event_reasons: int | None = 0x1  # GpuIdle
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 0}
    )  # (NVML_MEMORY_ERROR_TYPE_*, NVML_*_ECC) -> count
    retired_pending: int | None = None  # no page retirement on Hopper (row remapping instead)
    remapped: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    pcie_gen: int | None = 5
    pcie_width: int | None = 16
    pcie_replay: int | None = 0
    fields: list[Field] = field(default_factory=list)
    field_errors: list[FieldError] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    graphics_processes: list[Process] = field(default_factory=list)
    proc_util: list[ProcUtil] = field(default_factory=list)
    mig_mode: tuple[int, int] | None = None  # None: (1, 1) when ``migs`` is non-empty, else (0, 0)
    mig_max: int | None = 7
    migs: list[MigDevice] = field(default_factory=list)
    supported_events: int | None = DEFAULT_SUPPORTED_EVENTS
    xids: list[Xid] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    delays: dict[str, int] = field(default_factory=dict)
    hangs: list[str] = field(default_factory=list)

    def resolved_uuid(self, index: int) -> str:
        return self.uuid if self.uuid is not None else gpu_uuid(index)

    def resolved_pci_bus_id(self, index: int) -> str:
        if self.pci_bus_id is not None:
            return self.pci_bus_id
        bus = H100_PCI_BUSES[index] if index < len(H100_PCI_BUSES) else 0xE0 + index
        return f"00000000:{bus:02X}:00.0"

    def render(self, index: int) -> list[str]:
        p = f"device {index}"
        mig_mode = self.mig_mode if self.mig_mode is not None else ((1, 1) if self.migs else (0, 0))
        lines = [
            f"{p} uuid {self.resolved_uuid(index)}",
            f"{p} serial {self.serial if self.serial is not None else f'165492200{index:04d}'}",
            f"{p} pci_bus_id {self.resolved_pci_bus_id(index)}",
            f"{p} minor {self.minor if self.minor is not None else index}",
        ]
        if self.name is not None:
            lines.append(f"{p} name {_text(self.name)}")
        scalars: Mapping[str, int | None] = {
            "pci_device_id": self.pci_device_id,
            "pci_subsystem_id": self.pci_subsystem_id,
            "persistence": self.persistence,
            "compute_mode": self.compute_mode,
            "util_gpu": self.util_gpu,
            "util_mem": self.util_mem,
            "mem_total": self.mem_total,
            "mem_reserved": self.mem_reserved,
            "mem_used": self.mem_used,
            "mem_free": self.mem_free,
            "power_mw": self.power_mw,
            "power_limit_mw": self.power_limit_mw,
            "enforced_power_limit_mw": self.enforced_power_limit_mw,
            "energy_mj": self.energy_mj,
            "temp_gpu": self.temp_gpu,
            "pstate": self.pstate,
            "num_fans": self.num_fans,
            "clocks_event_reasons": self.clocks_event_reasons,
            "retired_pending": self.retired_pending,
            "pcie_gen": self.pcie_gen,
            "pcie_width": self.pcie_width,
            "pcie_replay": self.pcie_replay,
            "mig_max": self.mig_max,
            "supported_events": self.supported_events,
        }
        lines += [
            f"{p} {key} {value:#x}" if key in _HEX_KEYS else f"{p} {key} {value}"
            for key, value in scalars.items()
            if value is not None
        ]
        if self.encoder is not None:
            lines.append(f"{p} encoder {self.encoder[0]} {self.encoder[1]}")
        if self.decoder is not None:
            lines.append(f"{p} decoder {self.decoder[0]} {self.decoder[1]}")
        lines += [f"{p} temp_threshold {t} {v}" for t, v in self.temp_thresholds.items()]
        lines += [f"{p} clock {t} {v}" for t, v in self.clocks.items()]
        lines += [f"{p} max_clock {t} {v}" for t, v in self.max_clocks.items()]
        lines += [f"{p} fan {i} {pct}" for i, pct in enumerate(self.fans)]
        lines += [f"{p} ecc {et} {ct} {n}" for (et, ct), n in self.ecc.items()]
        if self.remapped is not None:
            lines.append(f"{p} remapped {' '.join(str(v) for v in self.remapped)}")
        lines += [f"{p} field {f.render()}" for f in self.fields]
        for fe in self.field_errors:
            scope = "" if fe.scope_id is None else f" {fe.scope_id}"
            lines.append(f"{p} field_error {fe.field_id}{scope} {fe.ret}")
        lines += [f"{p} process {proc.render()}" for proc in self.processes]
        lines += [f"{p} graphics_process {proc.render()}" for proc in self.graphics_processes]
        lines += [f"{p} proc_util {u.pid} {u.timestamp_us} {u.sm} {u.mem} {u.enc} {u.dec}" for u in self.proc_util]
        lines.append(f"{p} mig_mode {mig_mode[0]} {mig_mode[1]}")
        for mig in self.migs:
            lines += mig.render(index)
        for x in self.xids:
            line = f"{p} xid {x.seq} {x.xid}"
            if x.gpu_instance_id is not None or x.compute_instance_id is not None:
                gi = 0xFFFFFFFF if x.gpu_instance_id is None else x.gpu_instance_id
                ci = 0xFFFFFFFF if x.compute_instance_id is None else x.compute_instance_id
                line += f" {gi} {ci}"
            lines.append(line)
        lines += [f"{p} error {fn} {code}" for fn, code in self.errors.items()]
        lines += [f"{p} delay {fn} {ms}" for fn, ms in self.delays.items()]
        lines += [f"{p} hang {fn}" for fn in self.hangs]
        return lines


_HEX_KEYS = frozenset({"pci_device_id", "pci_subsystem_id", "clocks_event_reasons", "supported_events"})
_tmp_counter = itertools.count()


@dataclass
class Scenario:
    """The whole fake node: driver and CUDA versions, GPUs, global injected errors and delays.

    ``errors``/``delays`` map a C function name (``"nvmlDeviceGetCount_v2"``; an unversioned name such as
    ``"nvmlDeviceGetMemoryInfo"`` also selects its ``_vN`` symbols) to a return code or milliseconds.
    ``init_error`` makes ``nvmlInit`` fail with that code (9: NVMLError_DriverNotLoaded). ``hangs`` names functions
    (or ``"*"``, which includes ``nvmlInit``) whose every call blocks until a scenario without the rule is written:
    a wedged driver call that returns once the driver recovers.
    """

    gpus: list[Gpu] = field(default_factory=lambda: [Gpu()])
    driver: str | None = "550.54.15"
    cuda: int | None = 12040
    nvml_version: str | None = None  # None: "<cuda major>.<driver>", e.g. 12.550.54.15
    init_error: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    delays: dict[str, int] = field(default_factory=dict)
    hangs: list[str] = field(default_factory=list)
    extra_lines: list[str] = field(default_factory=list)  # appended verbatim (tests of the parser)

    def render(self) -> str:
        lines = ["# nodeagent NVML test double scenario (tests/nvml_double/README.md)"]
        if self.driver is not None:
            lines.append(f"driver {self.driver}")
        if self.cuda is not None:
            lines.append(f"cuda {self.cuda}")
        if self.nvml_version is not None:
            lines.append(f"nvml_version {self.nvml_version}")
        if self.init_error is not None:
            lines.append(f"init_error {self.init_error}")
        lines += [f"error {fn} {code}" for fn, code in self.errors.items()]
        lines += [f"delay {fn} {ms}" for fn, ms in self.delays.items()]
        lines += [f"hang {fn}" for fn in self.hangs]
        for index, gpu in enumerate(self.gpus):
            lines += gpu.render(index)
        lines += self.extra_lines
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Atomically replace ``path`` with this scenario; return the path."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)
        return path


def _text(value: str) -> str:
    if "\n" in value or "\r" in value or not value.strip():
        raise ValueError(f"scenario text must be one non-empty line: {value!r}")
    return value
