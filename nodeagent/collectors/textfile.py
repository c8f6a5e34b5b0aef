"""
Metrics from ``*.prom`` files that other programs write (cron jobs, hardware tools), as node_exporter's
textfile collector does.

Families: whatever the files hold, plus ``node_textfile_mtime_seconds{file}`` and
``node_textfile_scrape_error`` (1 if any file could not be read or parsed this cycle).
Sources: ``<rootfs>/<directory>/*.prom`` in Prometheus text format (parsed with prometheus-client's
parser). Like node_exporter, a file with client-side timestamps is rejected, and a file that fails is
skipped without affecting the others. Histograms and summaries are re-exported per sample name as
untyped families (``x_bucket``, ``x_sum``, ``x_count``): PromQL works on them unchanged.
Writers should write to a temporary file and rename it into place, so a cycle never reads half a file.
Shell equivalent: ``cat /var/lib/node_exporter/textfile_collector/*.prom``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec
from nodeagent.hostfs import read_text
from nodeagent.metrics import MetricFamily, MetricType, gauge, single


class TextfileConfig(CollectorConfig):
    """Options of the ``textfile`` collector."""

    directory: str = "/var/lib/node_exporter/textfile_collector"


@dataclass
class _Family:
    type: MetricType
    help: str
    source: str
    labelnames: list[str] = field(default_factory=list)
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


class TextfileError(ValueError):
    """A textfile that cannot be exported; the message names the file."""


def parse_textfile(text: str, path: str) -> dict[str, _Family]:
    """Parse one file into families keyed by sample name."""
    out: dict[str, _Family] = {}
    try:
        parsed = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises IndexError and others on malformed text, not only ValueError
        raise TextfileError(f"{path}: invalid text format: {type(exc).__name__}: {exc}") from exc
    for family in parsed:
        for sample in family.samples:
            if sample.timestamp is not None:
                raise TextfileError(f"{path}: {sample.name} has a client-side timestamp, which is not supported")
            kind: MetricType = "untyped"
            if family.type == "counter" and sample.name.endswith("_total"):
                kind = "counter"
            elif family.type == "gauge":
                kind = "gauge"
            fam = out.get(sample.name)
            if fam is None:
                fam = out[sample.name] = _Family(kind, family.documentation or f"Metric read from {path}.", path)
            for label in sample.labels:
                if label not in fam.labelnames:
                    fam.labelnames.append(label)
            try:
                value = float(sample.value)
            except OverflowError:  # an integer literal past the float range, which Prometheus' own parser refuses too
                raise TextfileError(f"{path}: {sample.name} has a value out of the float range") from None
            fam.samples.append((sample.labels, value))
    return out


class TextfileCollector(BaseCollector):
    """Reads every ``*.prom`` file of the directory each cycle."""

    def __init__(self, ctx: CollectorContext, cfg: TextfileConfig) -> None:
        self._dir = ctx.paths.root(cfg.directory)
        self._paths = ctx.paths
        self._log = ctx.log

    async def collect(self) -> Sequence[MetricFamily]:
        """Return the files' families, their modification times and the error flag."""
        merged: dict[str, _Family] = {}
        error = 0
        mtimes = gauge("node_textfile_mtime_seconds", "Unixtime mtime of textfiles successfully read.", ("file",))
        try:
            # Listed directly, not with glob, which would make an unreadable directory look empty.
            entries = os.listdir(self._dir)
        except FileNotFoundError:
            entries = []  # no directory: nothing to read, as with an empty one
        except OSError as exc:
            entries = []
            error = 1
            self._log.error(
                "textfile.directory_unreadable",
                directory=self._paths.strip_root(self._dir),
                error={"message": exc.strerror or str(exc)},
            )
        # Hidden files are skipped: scripts write .name.prom and rename it into place.
        for path in sorted(os.path.join(self._dir, n) for n in entries if n.endswith(".prom") and n[0] != "."):
            host_path = self._paths.strip_root(path)
            try:
                mtime = os.stat(path).st_mtime
                families = parse_textfile(read_text(path), host_path)
                for name, fam in families.items():
                    known = merged.get(name)
                    if known is not None and known.type != fam.type:
                        raise TextfileError(
                            f"{host_path}: {name} is {fam.type} here but {known.type} in {known.source}"
                        )
                for name, fam in families.items():
                    known = merged.setdefault(name, _Family(fam.type, fam.help, fam.source))
                    known.labelnames.extend(n for n in fam.labelnames if n not in known.labelnames)
                    known.samples.extend(fam.samples)
            except (OSError, TextfileError) as exc:
                error = 1
                self._log.error("textfile.skipped", file=host_path, error={"message": str(exc)})
                continue
            mtimes.add((host_path,), mtime)
        out: list[MetricFamily] = []
        for name, fam in merged.items():
            names = tuple(fam.labelnames)
            # Prometheus treats an empty label as absent, so the union of label names loses nothing.
            samples: dict[tuple[str, ...], float] = {}
            for labels, value in fam.samples:
                key = tuple(labels.get(n, "") for n in names)
                if key in samples:
                    error = 1
                    self._log.error("textfile.duplicate_series", metric=name, labels=dict(zip(names, key, strict=True)))
                    continue
                samples[key] = value
            out.append(MetricFamily(name, fam.type, fam.help, names, tuple(samples.items())))
        out.append(mtimes.build())
        out.append(
            single(
                "node_textfile_scrape_error",
                "gauge",
                "1 if there was an error opening or reading a file, 0 otherwise.",
                error,
            )
        )
        return out


SPEC = CollectorSpec(
    name="textfile",
    description="Metrics from *.prom files written by other programs (node_exporter's textfile collector).",
    config_model=TextfileConfig,
    factory=TextfileCollector,
)
