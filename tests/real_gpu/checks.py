"""
Assertions that hold for what the probe (tests/real_gpu/probe.py) reads from any working NVIDIA GPU: identity
formats, value ranges, memory that adds up, counters that never go back, the collector's families agreeing with the
samples. Each takes the probe's JSON and raises AssertionError naming the GPU and the values. The real-GPU tests run
them on real hardware; the probe's own test runs them on the NVML test double, so they cannot rot unnoticed.
"""

from __future__ import annotations

import re
from typing import Any

from nodeagent.collectors.gpu import FAMILIES

Probe = dict[str, Any]
Gpu = dict[str, Any]

UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PCI_BUS_ID_RE = re.compile(r"^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]$")  # nvmlPciInfo_t.busId, as NVML spells it
MiB = 1 << 20
# nvmlMemory_v2_t is one driver snapshot: its parts add up to the byte in practice; allow one MiB of slack.
MEMORY_SLACK = 1 * MiB
COUNTER_SUFFIXES = tuple(suffix for suffix, family in FAMILIES.items() if family.type == "counter")


def gpus(probe: Probe, sample: int = -1) -> list[Gpu]:
    """The GPUs of one sample (default: the second)."""
    result: list[Gpu] = probe["samples"][sample]["gpus"]
    return result


def reading(gpu: Gpu, suffix: str, labels: str = "") -> float | None:
    """One reading of a GPU (``labels`` joined with ``/``), or ``None`` if NVML did not give it."""
    value = gpu["readings"].get(suffix, {}).get(labels)
    return None if value is None else float(value)


def need(gpu: Gpu, suffix: str, labels: str = "") -> float:
    """A reading every working data-centre GPU gives."""
    value = reading(gpu, suffix, labels)
    assert value is not None, f"GPU {gpu['index']} ({gpu['uuid']}): no {suffix}[{labels}] reading: {gpu['readings']}"
    return value


def family(probe: Probe, name: str) -> list[dict[str, Any]]:
    """The samples of one collector family (``{"labels": {...}, "value": v}``); [] if the cycle had none."""
    return [s for f in probe["collector"]["families"] if f["name"] == name for s in f["samples"]]


def _label(gpu: Gpu) -> str:
    return f"GPU {gpu['index']} ({gpu['uuid']}, {gpu['name']})"


def check_gpus_answer(probe: Probe) -> None:
    """At least one GPU; both samples saw the same GPUs, every one up."""
    assert probe["available"] is True
    count = probe["gpu_count"]
    assert count >= 1, "NVML initialised but counts no GPU"
    for n, sample in enumerate(probe["samples"]):
        assert len(sample["gpus"]) == count, f"sample {n}: {len(sample['gpus'])} GPUs, gpu_count {count}"
        down = [(g["index"], g["error"]) for g in sample["gpus"] if not g["up"]]
        assert down == [], f"sample {n}: GPUs down: {down}"
    first = [(g["index"], g["uuid"]) for g in gpus(probe, 0)]
    assert first == [(g["index"], g["uuid"]) for g in gpus(probe, 1)]
    assert [g["index"] for g in gpus(probe)] == list(range(count))


def check_identity(probe: Probe) -> None:
    """UUIDs and PCI bus ids are well formed and unique; every GPU has a name; versions are set."""
    uuids = [g["uuid"] for g in gpus(probe)]
    bad = [u for u in uuids if not UUID_RE.match(u)]
    assert bad == [], f"malformed GPU uuids: {bad}"
    assert len(set(uuids)) == len(uuids), f"duplicate uuids: {uuids}"
    buses = [g["pci_bus_id"] for g in gpus(probe)]
    assert [b for b in buses if not PCI_BUS_ID_RE.match(b)] == [], f"malformed PCI bus ids: {buses}"
    assert len(set(buses)) == len(buses), f"duplicate PCI bus ids: {buses}"
    assert all(g["name"].strip() for g in gpus(probe)), [g["name"] for g in gpus(probe)]
    assert re.match(r"^\d+\.\d+(\.\d+)?$", probe["driver_version"]), probe["driver_version"]
    assert re.match(r"^\d+\.\d+$", probe["cuda_version"]), probe["cuda_version"]


def check_memory(probe: Probe) -> None:
    """
    total > 0, and used + free (+ reserved) == total. nvmlMemory_v2_t's ``used`` excludes ``reserved`` on current
    drivers (R590 reference: total = reserved + used + free); the R525 reference said ``used`` includes it
    (total = used + free). Either identity passes; the message says which held.
    """
    for g in gpus(probe):
        total, used, free = need(g, "memory_total"), need(g, "memory_used"), need(g, "memory_free")
        reserved = reading(g, "memory_reserved") or 0.0
        assert total > 0, f"{_label(g)}: memory total {total}"
        assert 0 <= used <= total and 0 <= free <= total and 0 <= reserved <= total, (total, used, free, reserved)
        separate = abs(total - (reserved + used + free))
        included = abs(total - (used + free))
        assert min(separate, included) <= MEMORY_SLACK, (
            f"{_label(g)}: total {total:.0f} != reserved {reserved:.0f} + used {used:.0f} + free {free:.0f} "
            f"(off by {separate:.0f}) and != used + free (off by {included:.0f})"
        )
        for m in g["mig"]:
            mt = m["readings"].get("memory_total", {}).get("")
            mu = m["readings"].get("memory_used", {}).get("")
            assert mt is not None and mt > 0, f"{_label(g)} MIG {m['uuid']}: memory total {mt}"
            assert mu is None or 0 <= mu <= mt, f"{_label(g)} MIG {m['uuid']}: used {mu} of {mt}"


def check_ratios(probe: Probe) -> None:
    """Every utilization and fan ratio in [0, 1]; GPU and memory utilization given unless MIG is on."""
    for g in gpus(probe):
        for suffix in ("utilization", "fan_speed"):
            for labels, value in g["readings"].get(suffix, {}).items():
                assert 0.0 <= value <= 1.0, f"{_label(g)}: {suffix}[{labels}] = {value}"
        if g["info"].get("mig_mode") != "enabled":
            need(g, "utilization", "gpu")
            need(g, "utilization", "memory")
        for pid, util in g["process_utilization"].items():
            assert all(0.0 <= v <= 1.0 for v in util.values()), f"{_label(g)}: pid {pid} utilization {util}"


def check_temperature(probe: Probe) -> None:
    """GPU (and memory) temperature in (0, 120) °C, below the shutdown threshold."""
    for g in gpus(probe):
        core = need(g, "temperature", "gpu")
        for labels, value in g["readings"]["temperature"].items():
            assert 0 < value < 120, f"{_label(g)}: temperature[{labels}] = {value} °C"
        shutdown = reading(g, "temperature_threshold", "shutdown")
        if shutdown is not None:
            assert core < shutdown, f"{_label(g)}: {core} °C is not below the shutdown threshold {shutdown} °C"
        for labels, value in g["readings"].get("temperature_threshold", {}).items():
            assert 0 < value < 150, f"{_label(g)}: threshold[{labels}] = {value} °C"


def check_power(probe: Probe) -> None:
    """Power draw > 0 W and at most 1.5 x the enforced limit (> 0 W)."""
    for g in gpus(probe):
        power, limit = need(g, "power"), need(g, "power_limit")
        assert limit > 0, f"{_label(g)}: power limit {limit} W"
        assert 0 < power <= limit * 1.5, f"{_label(g)}: power {power} W, limit {limit} W"


def check_clocks(probe: Probe) -> None:
    """Every clock > 0 and, where NVML gives its maximum, at most that; graphics, SM and memory clocks given."""
    for g in gpus(probe):
        for name in ("graphics", "sm", "memory"):
            need(g, "clock", name)
        clocks, maxima = g["readings"].get("clock", {}), g["readings"].get("clock_max", {})
        for name, hz in clocks.items():
            assert hz > 0, f"{_label(g)}: {name} clock {hz} Hz"
            if name in maxima:
                assert hz <= maxima[name], f"{_label(g)}: {name} clock {hz} Hz above its maximum {maxima[name]} Hz"
        for name, hz in maxima.items():
            assert hz > 0, f"{_label(g)}: {name} maximum clock {hz} Hz"


def check_pcie(probe: Probe) -> None:
    """Current PCIe link generation 1..6 and width 1..32 lanes."""
    for g in gpus(probe):
        gen, width = need(g, "pcie_link_generation"), need(g, "pcie_link_width")
        assert gen == int(gen) and 1 <= gen <= 6, f"{_label(g)}: PCIe generation {gen}"
        assert width == int(width) and 1 <= width <= 32, f"{_label(g)}: PCIe width {width}"


def check_counters_never_decrease(probe: Probe) -> None:
    """Energy is read, and every counter reading (energy, ECC, PCIe bytes, ...) is as large in the second sample."""
    for g0, g1 in zip(gpus(probe, 0), gpus(probe, 1), strict=True):
        need(g0, "energy")
        need(g1, "energy")
        for suffix in COUNTER_SUFFIXES:
            before, after = g0["readings"].get(suffix, {}), g1["readings"].get(suffix, {})
            for labels, value in before.items():
                if labels in after:
                    assert after[labels] >= value, (
                        f"{_label(g1)}: {suffix}[{labels}] went from {value} to {after[labels]}"
                    )
    for e in probe["energy"]:
        assert e["second_joules"] >= e["first_joules"], e


def check_energy_rate(probe: Probe, low: float = 0.1, high: float = 10.0) -> None:
    """
    Energy used between the samples, per second, is within ``low``..``high`` x the mean of the two power readings
    (loose: NVML averages power over its own window and updates the energy counter at its own rate).
    """
    for e, g0, g1 in zip(probe["energy"], gpus(probe, 0), gpus(probe, 1), strict=True):
        seconds = e["seconds"]
        rate = (e["second_joules"] - e["first_joules"]) / seconds
        power = (need(g0, "power") + need(g1, "power")) / 2
        assert low * power <= rate <= high * power, (
            f"{_label(g1)}: {e['second_joules'] - e['first_joules']:.3f} J in {seconds:.3f} s = {rate:.1f} W, "
            f"power readings average {power:.1f} W"
        )


def check_families(probe: Probe) -> None:
    """
    The collector's cycle succeeded; ``nodeagent_gpu_up`` is 1 for exactly the GPUs the probe saw; every family's
    samples carry its label names; values the probe also read agree (info, memory total).
    """
    collector = probe["collector"]
    assert collector["error"] is None, collector["error"]
    for f in collector["families"]:
        assert f["name"].startswith("nodeagent_gpu_"), f["name"]
        for s in f["samples"]:
            assert list(s["labels"]) == f["labels"], (f["name"], s)
    seen = {(str(g["index"]), g["uuid"]) for g in gpus(probe)}
    up = {(s["labels"]["gpu"], s["labels"]["uuid"]): s["value"] for s in family(probe, "nodeagent_gpu_up")}
    assert up == dict.fromkeys(seen, 1.0), up
    info = {s["labels"]["uuid"]: s["labels"] for s in family(probe, "nodeagent_gpu_info")}
    assert set(info) == {u for _, u in seen}, info
    for g in gpus(probe):
        labels = info[g["uuid"]]
        assert (labels["name"], labels["pci_bus_id"]) == (g["name"], g["pci_bus_id"]), labels
        assert (labels["driver_version"], labels["cuda_version"]) == (probe["driver_version"], probe["cuda_version"])
    totals = {s["labels"]["uuid"]: s["value"] for s in family(probe, "nodeagent_gpu_memory_total_bytes")}
    assert totals == {g["uuid"]: need(g, "memory_total") for g in gpus(probe)}


def check_xid_watch(probe: Probe) -> None:
    """The Xid watch registered the GPUs and waited (timeouts are normal) until told to stop."""
    watch = probe["xid_watch"]
    assert watch["error"] is None, f"Xid watch failed: {watch['error']}"
    assert watch["stopped"], "Xid watch did not stop within its wait"


# What holds on any GPU, the NVML test double's H100 defaults included.
COMMON = (
    check_gpus_answer,
    check_identity,
    check_memory,
    check_ratios,
    check_temperature,
    check_power,
    check_clocks,
    check_pcie,
    check_counters_never_decrease,
    check_families,
    check_xid_watch,
)
