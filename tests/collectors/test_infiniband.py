"""The InfiniBand sysfs parsers and the infiniband collector, on the hand-written mlx5_0/mlx4_0 fixture tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import infiniband
from nodeagent.collectors.infiniband import parse_counter, parse_rate, parse_state
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import FIXTURES, Collect

MLX5 = ("mlx5_0", "1")
MLX4_1 = ("mlx4_0", "1")
MLX4_2 = ("mlx4_0", "2")

# family -> {(device, port): value}, read off the fixture files by hand (data counters times 4).
_MLX4_COUNTERS = {
    "excessive_buffer_overrun_errors_total": 0,
    "link_downed_total": 2,
    "link_error_recovery_total": 1,
    "local_link_integrity_errors_total": 0,
    "port_constraint_errors_received_total": 0,
    "port_constraint_errors_transmitted_total": 0,
    "port_data_received_bytes_total": 4294967295 * 4,  # a saturated 32-bit counter (pre-4.5 kernel)
    "port_data_transmitted_bytes_total": 4294967295 * 4,
    "port_discards_transmitted_total": 0,
    "port_errors_received_total": 5,
    "port_packets_received_total": 4294967295,
    "port_packets_transmitted_total": 4294967295,
    "port_transmit_wait_total": 3105927,
    "port_receive_remote_physical_errors_total": 0,
    "port_receive_switch_relay_errors_total": 0,
    "symbol_error_total": 7,
    "vl15_dropped_total": 0,
    "legacy_multicast_packets_received_total": 6521,
    "legacy_multicast_packets_transmitted_total": 4,
    "legacy_data_received_bytes_total": 30012338107 * 4,
    "legacy_packets_received_total": 92481736,
    "legacy_unicast_packets_received_total": 92475215,
    "legacy_unicast_packets_transmitted_total": 88711140,
    "legacy_data_transmitted_bytes_total": 28116390322 * 4,
    "legacy_packets_transmitted_total": 88711144,
}
_MLX5_COUNTERS = {
    "excessive_buffer_overrun_errors_total": 0,
    "link_downed_total": 1,
    "link_error_recovery_total": 0,
    "local_link_integrity_errors_total": 0,
    "multicast_packets_received_total": 21471,
    "multicast_packets_transmitted_total": 5,
    "port_constraint_errors_received_total": 0,
    "port_constraint_errors_transmitted_total": 0,
    "port_data_received_bytes_total": 387264188413 * 4,
    "port_data_transmitted_bytes_total": 402853170911 * 4,
    "port_discards_transmitted_total": 3,
    "port_errors_received_total": 0,
    "port_packets_received_total": 1124859312,
    "port_packets_transmitted_total": 1187042665,
    "port_transmit_wait_total": 9482213,
    "unicast_packets_received_total": 1124837841,
    "unicast_packets_transmitted_total": 1187042660,
    "port_receive_remote_physical_errors_total": 0,
    # port_receive_switch_relay_errors_total: the file reads "N/A (no PMA)", so mlx5_0 has no sample.
    "symbol_error_total": 0,
    "vl15_dropped_total": 0,
}


def _expected() -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {
        "node_infiniband_state_id": {MLX4_1: 4, MLX4_2: 1, MLX5: 4},
        "node_infiniband_physical_state_id": {MLX4_1: 5, MLX4_2: 2, MLX5: 5},
        "node_infiniband_rate_bytes_per_second": {MLX4_1: 7e9, MLX4_2: 312.5e6, MLX5: 25e9},
    }
    for suffix, value in _MLX4_COUNTERS.items():
        out.setdefault(f"node_infiniband_{suffix}", {}).update({MLX4_1: value, MLX4_2: 0})
    for suffix, value in _MLX5_COUNTERS.items():
        out.setdefault(f"node_infiniband_{suffix}", {})[MLX5] = value
    return out


def test_parse_state() -> None:
    """``state`` and ``phys_state`` files give their numeric id."""
    assert (4, 5) == (parse_state("4: ACTIVE\n", "state"), parse_state("5: LinkUp\n", "phys_state"))


@pytest.mark.parametrize("text", ["ACTIVE\n", "x: ACTIVE\n", "4: ACTIVE: 2\n", ""])
def test_parse_state_malformed(text: str) -> None:
    """Anything but ``<id>: <name>`` raises a ParseError naming the file."""
    with pytest.raises(ParseError, match=r"^/sys/x/state: line 1: expected '<id>: <NAME>'"):
        parse_state(text, "/sys/x/state")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200 Gb/sec (4X HDR)\n", 25_000_000_000),
        ("2.5 Gb/sec (1X SDR)\n", 312_500_000),
        ("400 Gb/sec (4X NDR)\n", 50_000_000_000),
        # node_exporter reads the number as a 32-bit float (Go ParseFloat(s, 32)): checked against its binary.
        ("13.64 Gb/sec (4X QDR)\n", 1_705_000_042),
    ],
)
def test_parse_rate(text: str, expected: int) -> None:
    """Gb/s become bytes/s (times 125,000,000)."""
    assert expected == parse_rate(text, "rate")


@pytest.mark.parametrize("text", ["fast\n", "200Gb/sec\n", "-1 Gb/sec\n", "inf Gb/sec\n", "nan Gb/sec\n", ""])
def test_parse_rate_malformed(text: str) -> None:
    """A rate without a leading non-negative number and a unit raises a ParseError naming the file."""
    with pytest.raises(ParseError, match=r"^/sys/x/rate: line 1: "):
        parse_rate(text, "/sys/x/rate")


def test_parse_counter() -> None:
    """A counter is a decimal integer; the driver's ``N/A (no PMA)`` means no value."""
    assert (18446744073709551615, None) == (
        parse_counter("18446744073709551615\n", "c"),
        parse_counter("N/A (no PMA)\n", "c"),
    )


@pytest.mark.parametrize("text", ["-1\n", "0x10\n", "N/A\n", "\n"])
def test_parse_counter_malformed(text: str) -> None:
    """Anything else raises a ParseError naming the file and the content."""
    with pytest.raises(ParseError, match=r"^/sys/x/counters/link_downed: line 1: expected a non-negative integer"):
        parse_counter(text, "/sys/x/counters/link_downed")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """Every port of both devices, with node_exporter's names, types, labels and scaled values."""
    families = await collect(infiniband.SPEC, fixture_paths)
    info = families.pop("node_infiniband_info")
    assert ("gauge", ("device", "board_id", "firmware_version", "hca_type")) == (info.type, info.labelnames)
    assert [
        (("mlx4_0", "MT_1090120019", "2.42.5000", ""), 1.0),  # mlx4_0 has no hca_type file: an empty label
        (("mlx5_0", "MT_0000000223", "20.39.1002", "MT4123"), 1.0),
    ] == list(info.samples)
    assert _expected() == {name: dict(f.samples) for name, f in families.items()}
    for name, family in families.items():
        assert ("device", "port") == family.labelnames, name
        assert family.type == ("counter" if name.endswith("_total") else "gauge"), name
        assert family.help.endswith("."), name


async def test_port_without_counters(tmp_path: Path, collect: Collect) -> None:
    """A port without a counters directory (Intel irdma) still has its state and rate."""
    port = tmp_path / "class" / "infiniband" / "irdma0" / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n")
    (port / "phys_state").write_text("5: LinkUp\n")
    (port / "rate").write_text("100 Gb/sec (4X EDR)\n")
    (port.parent.parent / "fw_ver").write_text("1.52\n")
    families = await collect(infiniband.SPEC, HostPaths(sysfs=str(tmp_path)))
    assert {
        "node_infiniband_info": {("irdma0", "", "1.52", ""): 1.0},
        "node_infiniband_state_id": {("irdma0", "1"): 4.0},
        "node_infiniband_physical_state_id": {("irdma0", "1"): 5.0},
        "node_infiniband_rate_bytes_per_second": {("irdma0", "1"): 12.5e9},
    } == {name: dict(f.samples) for name, f in families.items()}


async def test_absent_class_is_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """No /sys/class/infiniband (no adapter or driver): "no data" with a hint."""
    with pytest.raises(NoDataError) as info:
        await collect(infiniband.SPEC, empty_paths)
    assert info.value.reason.endswith("class/infiniband does not exist")
    assert "mlx5_ib" in info.value.hint


async def test_empty_class_is_no_data(tmp_path: Path, collect: Collect) -> None:
    """An empty class directory (driver loaded, no device bound) is also "no data"."""
    (tmp_path / "class" / "infiniband").mkdir(parents=True)
    with pytest.raises(NoDataError, match="has no devices"):
        await collect(infiniband.SPEC, HostPaths(sysfs=str(tmp_path)))


def _copy_fixture(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "sys" / "class" / "infiniband", tmp_path / "class" / "infiniband", symlinks=True)
    return tmp_path / "class" / "infiniband"


async def test_malformed_counter_names_file(tmp_path: Path, collect: Collect) -> None:
    """A counter that is neither a number nor N/A fails the cycle with a ParseError naming the file."""
    ib = _copy_fixture(tmp_path)
    (ib / "mlx5_0" / "ports" / "1" / "counters" / "symbol_error").write_text("garbage\n")
    with pytest.raises(ParseError, match=rf"^{ib}/mlx5_0/ports/1/counters/symbol_error: line 1: .*'garbage'"):
        await collect(infiniband.SPEC, HostPaths(sysfs=str(tmp_path)))


async def test_malformed_port_directory_names_path(tmp_path: Path, collect: Collect) -> None:
    """A ports entry that is not a number raises a ParseError naming the directory."""
    ib = _copy_fixture(tmp_path)
    (ib / "mlx5_0" / "ports" / "one").mkdir()
    with pytest.raises(ParseError, match=rf"^{ib}/mlx5_0/ports: 'one' is not a port number"):
        await collect(infiniband.SPEC, HostPaths(sysfs=str(tmp_path)))
