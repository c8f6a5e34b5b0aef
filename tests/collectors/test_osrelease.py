"""The os-release parser, its mtime cache, and the os collector."""

from __future__ import annotations

import os
import platform
import re
import textwrap
from pathlib import Path

import pytest

from nodeagent.collector import NoDataError
from nodeagent.collectors import osrelease
from nodeagent.collectors.osrelease import OsRelease, parse_os_release, resolve_under_root
from nodeagent.hostfs import HostPaths, ParseError

from .conftest import Collect, MakeCollector, by_name

INFO_LABELS = (
    "build_id",
    "id",
    "id_like",
    "image_id",
    "image_version",
    "name",
    "pretty_name",
    "variant",
    "variant_id",
    "version",
    "version_codename",
    "version_id",
)


def _rootfs(tmp_path: Path) -> HostPaths:
    return HostPaths(procfs=str(tmp_path), sysfs=str(tmp_path), rootfs=str(tmp_path))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_parse_quotes_escapes_and_comments() -> None:
    """Double quotes with escapes, single quotes, bare words, comments and blank lines parse as a shell would."""
    text = textwrap.dedent(
        """\
        # Ubuntu, with a twist
        NAME="Ubuntu"
        VERSION="24.04.1 LTS (Noble Numbat)"

        ID=ubuntu
        ID_LIKE=debian
        PRETTY_NAME='Ubuntu 24.04.1 LTS'
        VARIANT="Server \\"edition\\""
        VERSION_ID="24.04"
        VERSION_CODENAME=noble
        BUILD_ID=""
        """
    )
    expected = OsRelease(
        id="ubuntu",
        id_like="debian",
        name="Ubuntu",
        pretty_name="Ubuntu 24.04.1 LTS",
        variant='Server "edition"',
        version="24.04.1 LTS (Noble Numbat)",
        version_codename="noble",
        version_id="24.04",
    )
    assert expected == parse_os_release(text)


@pytest.mark.parametrize(
    ("version_id", "number"), [("24.04", 24.04), ("12", 12.0), ("3.18.4", 3.18), ("rolling", 0.0), ("", 0.0)]
)
def test_version_number_is_major_minor_prefix(version_id: str, number: float) -> None:
    """The version number is the major.minor prefix of VERSION_ID, 0 when it has none."""
    assert number == OsRelease(version_id=version_id).version_number


@pytest.mark.parametrize(
    ("line", "reason"),
    [("NAME Debian", "expected KEY=value"), ('NAME="Debian', "No closing quotation"), ("NAME=Debian GNU", "quoted")],
)
def test_parse_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    """A line that is not a shell assignment raises a ParseError naming the source, line number and line."""
    with pytest.raises(ParseError, match=rf"^/etc/os-release: line 2: .*{reason}.*{re.escape(repr(line))}"):
        parse_os_release(f"ID=debian\n{line}\n")


async def test_collect_fixture(fixture_paths: HostPaths, collect: Collect) -> None:
    """The fixture's Debian 12 os-release gives node_os_info with all twelve labels and node_os_version 12."""
    families = await collect(osrelease.SPEC, fixture_paths)
    info = families["node_os_info"]
    expected_labels = ("", "debian", "", "", "", "Debian GNU/Linux", "Debian GNU/Linux 12 (bookworm)", "", "")
    expected_labels += ("12 (bookworm)", "bookworm", "12")
    assert ("gauge", INFO_LABELS, ((expected_labels, 1.0),)) == (info.type, info.labelnames, info.samples)
    version = families["node_os_version"]
    expected_version = ("gauge", ("id", "id_like", "name"), ((("debian", "", "Debian GNU/Linux"), 12.0),))
    assert expected_version == (version.type, version.labelnames, version.samples)


async def test_no_version_number_omits_version_family(tmp_path: Path, collect: Collect) -> None:
    """Without a numeric VERSION_ID only node_os_info is reported, as node_exporter does."""
    _write(tmp_path / "etc" / "os-release", 'NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n')
    families = await collect(osrelease.SPEC, _rootfs(tmp_path))
    assert ["node_os_info"] == list(families)


async def test_falls_back_to_usr_lib(tmp_path: Path, collect: Collect) -> None:
    """Without /etc/os-release the collector reads /usr/lib/os-release."""
    _write(tmp_path / "usr" / "lib" / "os-release", "ID=fedora\nVERSION_ID=41\n")
    families = await collect(osrelease.SPEC, _rootfs(tmp_path))
    assert ((("fedora", "", ""), 41.0),) == families["node_os_version"].samples


def test_absolute_symlink_resolves_inside_rootfs(tmp_path: Path) -> None:
    """An absolute /etc/os-release symlink is followed inside the host root, not the agent's own filesystem."""
    _write(tmp_path / "usr" / "lib" / "os-release", "ID=host\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").symlink_to("/usr/lib/os-release")
    assert str(tmp_path / "usr" / "lib" / "os-release") == resolve_under_root(_rootfs(tmp_path), "/etc/os-release")


async def test_reparses_only_when_mtime_changes(tmp_path: Path, make_collector: MakeCollector) -> None:
    """The same families are served while the mtime is unchanged, and the new content once it changes."""
    path = tmp_path / "etc" / "os-release"
    _write(path, "ID=one\nVERSION_ID=1\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    collector = make_collector(osrelease.SPEC, _rootfs(tmp_path))
    first = await collector.collect()
    path.write_text("ID=two\nVERSION_ID=2\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert first is await collector.collect()
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert ((("two", "", ""), 2.0),) == by_name(await collector.collect())["node_os_version"].samples


async def test_absent_os_release_is_no_data(empty_paths: HostPaths, collect: Collect) -> None:
    """With neither os-release file the collector reports NoDataError naming both paths."""
    with pytest.raises(NoDataError, match="os-release"):
        await collect(osrelease.SPEC, empty_paths)


async def test_malformed_os_release_names_file(tmp_path: Path, collect: Collect) -> None:
    """The collector's ParseError names the file it read and the offending line."""
    _write(tmp_path / "etc" / "os-release", "ID=debian\nthis is not an assignment\n")
    with pytest.raises(ParseError, match=rf"^{tmp_path}/etc/os-release: line 2: "):
        await collect(osrelease.SPEC, _rootfs(tmp_path))


async def test_live_matches_platform(live_paths: HostPaths, collect: Collect) -> None:
    """On this host the labels equal what Python's own os-release parser reads."""
    families = await collect(osrelease.SPEC, live_paths)
    fresh = platform.freedesktop_os_release()
    expected = tuple(fresh.get(label.upper(), "") for label in INFO_LABELS)
    assert expected == families["node_os_info"].samples[0][0]
