"""
Operating system identification from ``/etc/os-release``, falling back to ``/usr/lib/os-release``.

Families: ``node_os_info{build_id,id,id_like,image_id,image_version,name,pretty_name,variant,variant_id,
version,version_codename,version_id}`` (gauge, value 1) and ``node_os_version{id,id_like,name}`` (gauge:
the major.minor prefix of VERSION_ID; omitted when it has none, as in node_exporter), node_exporter's ``os``
collector. Shell equivalent: ``cat /etc/os-release``. The parse is cached until the file's mtime changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.collector import BaseCollector, CollectorConfig, CollectorContext, CollectorSpec, NoDataError
from nodeagent.hostfs import HostPaths, ParseError, read_text
from nodeagent.metrics import MetricFamily

_CANDIDATES = ("/etc/os-release", "/usr/lib/os-release")
_VERSION_RE = re.compile(r"^[0-9]+\.?[0-9]*")  # node_exporter's versionRegex
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_LINKS = 8

_INFO_LABELS = (
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
_INFO_HELP = (
    "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, "
    "name, pretty_name, variant, variant_id, version, version_codename, version_id."
)
_VERSION_HELP = "Metric containing the major.minor part of the OS version."


@dataclass(frozen=True, slots=True)
class OsRelease:
    """The os-release variables node_exporter reports; ``""`` where the file does not set one."""

    build_id: str = ""
    id: str = ""
    id_like: str = ""
    image_id: str = ""
    image_version: str = ""
    name: str = ""
    pretty_name: str = ""
    variant: str = ""
    variant_id: str = ""
    version: str = ""
    version_codename: str = ""
    version_id: str = ""

    @property
    def version_number(self) -> float:
        """The major.minor prefix of VERSION_ID as a number (``22.04``, ``12``); 0 when there is none."""
        m = _VERSION_RE.match(self.version_id)
        return float(m.group(0)) if m else 0.0


# Inside double quotes a backslash escapes only these (os-release(5): "following shell style"); before any other
# character it stays, as in sh. shlex keeps the backslash before $ and `, so it is not used.
_DQUOTE_ESCAPES = frozenset('$`"\\')


def _shell_words(value: str) -> list[str]:
    """
    The words of a shell-quoted value: single quotes literal, double quotes where a backslash escapes only a dollar
    sign, backtick, double quote or backslash, a bare backslash escaping any character, words split at blanks.

    Raises:
        ValueError: an unclosed quote or a backslash at the end.
    """
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        i += 1
        if (quote == "'" and c != "'") or (quote == '"' and c not in '"\\'):
            word.append(c)
        elif quote == '"' and c == "\\":
            escaped = i < n and value[i] in _DQUOTE_ESCAPES
            word.append(value[i] if escaped else c)
            i += escaped
        elif quote:
            quote = ""  # the closing quote
        elif c in " \t\r":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            in_word = True
            if c in "'\"":
                quote = c
            elif c == "\\":
                if i == n:
                    raise ValueError("No escaped character")
                word.append(value[i])
                i += 1
            else:
                word.append(c)
    if quote:
        raise ValueError("No closing quotation")
    if in_word:
        words.append("".join(word))
    return words


def parse_os_release(text: str, source: str = "/etc/os-release") -> OsRelease:
    """
    Parse os-release(5): shell-style ``KEY=value`` lines, values optionally single- or double-quoted with
    backslash escapes; blank lines and ``#`` comments are skipped.

    Raises:
        ParseError: a line is not an assignment or has an unbalanced quote; the message names ``source``
            and the line.
    """
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not _KEY_RE.match(key):
            raise ParseError(f"{source}: line {lineno}: expected KEY=value: {raw!r}")
        try:
            words = _shell_words(value)
        except ValueError as exc:
            raise ParseError(f"{source}: line {lineno}: {exc}: {raw!r}") from None
        if len(words) > 1:
            raise ParseError(f"{source}: line {lineno}: value with spaces must be quoted: {raw!r}")
        values[key.lower()] = words[0] if words else ""
    return OsRelease(**{label: values.get(label, "") for label in _INFO_LABELS})


def resolve_under_root(paths: HostPaths, host_path: str) -> str:
    """
    The path under ``paths.rootfs`` of a host path, following symlinks inside the host's root.

    ``/etc/os-release`` is often a symlink; an absolute target must resolve in the host's tree, not in
    this container's (where it would name the agent image's own os-release).
    """
    path = paths.root(host_path)
    for _ in range(_MAX_LINKS):
        if not os.path.islink(path):
            return path
        target = os.readlink(path)
        path = paths.root(target) if os.path.isabs(target) else os.path.join(os.path.dirname(path), target)
    return path


def _families(release: OsRelease) -> tuple[MetricFamily, ...]:
    labels = tuple(getattr(release, label) for label in _INFO_LABELS)
    families = [MetricFamily("node_os_info", "gauge", _INFO_HELP, _INFO_LABELS, ((labels, 1.0),))]
    version = release.version_number
    if version > 0:
        families.append(
            MetricFamily(
                "node_os_version",
                "gauge",
                _VERSION_HELP,
                ("id", "id_like", "name"),
                (((release.id, release.id_like, release.name), version),),
            )
        )
    return tuple(families)


class OsReleaseCollector(BaseCollector):
    """Checks the os-release file's mtime each cycle and re-parses it only when it changed."""

    def __init__(self, ctx: CollectorContext, cfg: CollectorConfig) -> None:
        self._paths = ctx.paths
        self._cached_key: tuple[str, int] | None = None
        self._cached: tuple[MetricFamily, ...] = ()

    async def collect(self) -> Sequence[MetricFamily]:
        """Return ``node_os_info`` and ``node_os_version``; ``NoDataError`` when no os-release file exists."""
        for candidate in _CANDIDATES:
            path = resolve_under_root(self._paths, candidate)
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                continue
            if self._cached_key == (path, mtime):
                return self._cached
            release = parse_os_release(read_text(path), path)
            # Families are immutable, so the same tuple is served until the file changes.
            self._cached_key, self._cached = (path, mtime), _families(release)
            return self._cached
        raise NoDataError(
            f"neither {self._paths.root(_CANDIDATES[0])} nor {self._paths.root(_CANDIDATES[1])} exists",
            "mount the host's root filesystem and point rootfs at it, or disable the os collector",
        )


SPEC = CollectorSpec(
    name="os",
    description="Operating system name and version from os-release.",
    config_model=CollectorConfig,
    factory=OsReleaseCollector,
)
