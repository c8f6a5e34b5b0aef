"""The textfile collector: re-exporting *.prom files, mtimes, and the error flag for bad files."""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent.collectors import textfile
from nodeagent.hostfs import HostPaths
from tests.collectors.conftest import Collect

GOOD = """\
# HELP backup_last_success_timestamp_seconds Last successful backup.
# TYPE backup_last_success_timestamp_seconds gauge
backup_last_success_timestamp_seconds{job="db"} 1.7e9
# TYPE backup_runs_total counter
backup_runs_total{job="db"} 42
# TYPE latency histogram
latency_bucket{le="1"} 3
latency_bucket{le="+Inf"} 4
latency_sum 2.5
latency_count 4
raid_ok 1
"""


def _host(tmp_path: Path, files: dict[str, str]) -> HostPaths:
    directory = tmp_path / "var" / "lib" / "node_exporter" / "textfile_collector"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text)
        os.utime(directory / name, (1_700_000_000, 1_700_000_000))
    return HostPaths(procfs=str(tmp_path), sysfs=str(tmp_path), rootfs=str(tmp_path))


async def test_reexports_files(collect: Collect, tmp_path: Path) -> None:
    """Families keep names, types, labels and values; histograms become per-sample untyped families."""
    families = await collect(textfile.SPEC, _host(tmp_path, {"backup.prom": GOOD, "ignored.txt": "x 1\n"}))

    assert ("gauge", ("job",), ((("db",), 1.7e9),)) == (
        families["backup_last_success_timestamp_seconds"].type,
        families["backup_last_success_timestamp_seconds"].labelnames,
        families["backup_last_success_timestamp_seconds"].samples,
    )
    assert ("counter", ((("db",), 42.0),)) == (
        families["backup_runs_total"].type,
        families["backup_runs_total"].samples,
    )
    assert ("untyped", ((("1",), 3.0), (("+Inf",), 4.0))) == (
        families["latency_bucket"].type,
        families["latency_bucket"].samples,
    )
    assert (((), 1.0),) == families["raid_ok"].samples
    assert ((("/var/lib/node_exporter/textfile_collector/backup.prom",), 1_700_000_000.0),) == (
        families["node_textfile_mtime_seconds"].samples
    )
    assert (((), 0),) == families["node_textfile_scrape_error"].samples


async def test_bad_file_is_skipped_and_flagged(collect: Collect, tmp_path: Path) -> None:
    """A malformed file, or one with timestamps, sets the error flag; the good file is still exported."""
    paths = _host(
        tmp_path, {"a.prom": GOOD, "b.prom": "this is { not metrics\n", "c.prom": "ts_metric 1 1700000000000\n"}
    )
    families = await collect(textfile.SPEC, paths)

    assert (((), 1),) == families["node_textfile_scrape_error"].samples
    assert "backup_runs_total" in families
    assert "ts_metric" not in families
    assert 1 == len(families["node_textfile_mtime_seconds"].samples)


async def test_families_merge_across_files_with_label_union(collect: Collect, tmp_path: Path) -> None:
    """One family spread over two files merges; a label missing in one file becomes empty; duplicates flag."""
    paths = _host(
        tmp_path,
        {
            "a.prom": 'disk_ok{dev="sda"} 1\n',
            "b.prom": 'disk_ok{dev="sdb",slot="2"} 0\ndisk_ok{dev="sdb",slot="2"} 1\n',
        },
    )
    families = await collect(textfile.SPEC, paths)

    assert ("dev", "slot") == families["disk_ok"].labelnames
    assert ((("sda", ""), 1.0), (("sdb", "2"), 0.0)) == families["disk_ok"].samples
    assert (((), 1),) == families["node_textfile_scrape_error"].samples


async def test_no_directory_is_not_an_error(collect: Collect, tmp_path: Path) -> None:
    """Without the directory the collector reports only the error flag, at 0, as node_exporter does."""
    families = await collect(textfile.SPEC, HostPaths(rootfs=str(tmp_path)))

    assert {"node_textfile_mtime_seconds", "node_textfile_scrape_error"} == set(families)
    assert (((), 0),) == families["node_textfile_scrape_error"].samples


async def test_unreadable_directory_is_an_error(collect: Collect, tmp_path: Path) -> None:
    """A directory that cannot be listed (here: a file in its place, ENOTDIR; as a non-root user also EACCES) sets
    the error flag instead of looking empty; hidden files are never read."""
    directory = tmp_path / "var" / "lib" / "node_exporter" / "textfile_collector"
    directory.parent.mkdir(parents=True)
    directory.write_text("not a directory\n")
    families = await collect(textfile.SPEC, HostPaths(rootfs=str(tmp_path)))
    assert (((), 1),) == families["node_textfile_scrape_error"].samples

    directory.unlink()
    paths = _host(tmp_path, {"a.prom": "raid_ok 1\n", ".b.prom": "this is { half written\n"})
    families = await collect(textfile.SPEC, paths)
    assert (((), 0),) == families["node_textfile_scrape_error"].samples
    assert "raid_ok" in families
