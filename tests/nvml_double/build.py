"""Compiles the NVML test double (``libnvml_double.c``) into ``<directory>/libnvidia-ml.so.1``.

The build is cached by a hash of the C source and the compiler command: a stamp file next to the library records
the hash, and a directory already holding a library with the same hash is returned untouched. The library is
written to a temporary name and renamed into place, so concurrent builds (pytest-xdist workers, parallel CI jobs)
never expose a half-written file and a process that has the old library mapped keeps its copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("libnvml_double.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
STAMP_NAME = LIBRARY_NAME + ".sha256"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wl,-soname," + LIBRARY_NAME)
LIBS = ("-lpthread",)


class CompilerMissing(RuntimeError):
    """No C compiler (``gcc``) on PATH."""


class BuildFailed(RuntimeError):
    """gcc rejected the source; the message holds its output."""


def source_hash(compiler: str = "gcc") -> str:
    """SHA-256 over the C source and the compile command (a flag change rebuilds)."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update("\0".join((compiler, *CFLAGS, *LIBS)).encode())
    return digest.hexdigest()


def default_directory() -> Path:
    """A per-source-hash directory under the system temporary directory, shared by test sessions."""
    return Path(tempfile.gettempdir()) / f"nodeagent-nvml-double-{source_hash()[:16]}"


def build(directory: Path | None = None, *, compiler: str = "gcc") -> Path:
    """Compile ``libnvidia-ml.so.1`` into ``directory`` (created if needed) unless it is current; return it.

    Raises :class:`CompilerMissing` when ``compiler`` is not on PATH and :class:`BuildFailed` when it fails.
    """
    directory = Path(directory) if directory is not None else default_directory()
    digest = source_hash(compiler)
    library, stamp = directory / LIBRARY_NAME, directory / STAMP_NAME
    if library.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return directory

    gcc = shutil.which(compiler)
    if gcc is None:
        raise CompilerMissing(f"{compiler} not found on PATH (apt-get install gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{LIBRARY_NAME}.", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [gcc, *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildFailed(f"{gcc} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        tmp.chmod(0o755)
        os.replace(tmp, library)
    finally:
        tmp.unlink(missing_ok=True)
    stamp_tmp = directory / f".{STAMP_NAME}.{os.getpid()}"
    stamp_tmp.write_text(digest + "\n")
    os.replace(stamp_tmp, stamp)
    return directory


if __name__ == "__main__":
    print(build() / LIBRARY_NAME)
