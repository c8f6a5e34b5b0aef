"""
Captures a GPU node's real NVML readings and the host files around them as test fixtures, into
``<directory>/<gpu model>_<driver version>/``:

    python3 -m tests.real_gpu.capture tests/fixtures/nvml/ [--cuda-process] [--depth N]

Files: ``probe.json`` (tests/real_gpu/probe.py, run in a clean child process), ``nvidia-smi-q.xml``
(``nvidia-smi -q -x``, where installed), ``proc-driver-nvidia-version.txt`` and
``proc-driver-nvidia-gpus/<bus id>/information``, ``proc-self-cgroup.txt``, ``cgroup-mounts.txt`` (the cgroup lines
of /proc/self/mountinfo), ``cgroup-tree.txt`` (directory names under /sys/fs/cgroup, depth-limited, no file
contents) and ``MANIFEST.json`` (when, on what kernel, which commands with which exit status). ``--cuda-process``
holds a CUDA context (tests/real_gpu/cuda_context.py) during the probe, so the process lists are not empty.
Exit status 3: NVML is unavailable here; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.real_gpu.child import CUDA_CONTEXT_SCRIPT, UNAVAILABLE, real_env, run_probe

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_DRIVER = Path("/proc/driver/nvidia")


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def directory_name(probe: dict[str, Any]) -> str:
    """``<model>_<driver>``; several models are joined with ``+`` in index order."""
    names: list[str] = []
    for g in probe["samples"][-1]["gpus"]:
        if g["name"] not in names:
            names.append(g["name"])
    return f"{'+'.join(slug(n) for n in names) or 'no-gpu'}_{slug(probe['driver_version'])}"


def cgroup_tree(root: Path, depth: int, max_entries: int) -> str:
    """Directory names under ``root``, ``depth`` levels deep, at most ``max_entries`` per directory (sorted)."""
    lines = [f"{root}/"]

    def walk(d: Path, level: int) -> None:
        try:
            entries = sorted(
                (e for e in os.scandir(d) if e.is_dir(follow_symlinks=False) or e.is_symlink()), key=lambda e: e.name
            )
        except OSError as exc:
            lines.append(f"{'  ' * level}[{type(exc).__name__}: {exc.strerror}]")
            return
        for e in entries[:max_entries]:
            if e.is_symlink():
                lines.append(f"{'  ' * level}{e.name} -> {os.readlink(e.path)}")
                continue
            lines.append(f"{'  ' * level}{e.name}/")
            if level < depth:
                walk(Path(e.path), level + 1)
        if len(entries) > max_entries:
            lines.append(f"{'  ' * level}... ({len(entries) - max_entries} more)")

    walk(root, 1)
    return "\n".join(lines) + "\n"


def cgroup_mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return "".join(line for line in f if re.search(r" - cgroup2? ", line))


class CudaProcess(contextlib.AbstractContextManager["CudaProcess"]):
    """``cuda_context.py`` in a clean environment until the ``with`` block ends (killed by pid, then reaped)."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CUDA_CONTEXT_SCRIPT), "--seconds", "600"],
            env=real_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)
        line = self.proc.stdout.readline() if poller.poll(timeout * 1000) else b""
        if line != b"ready\n":
            self.close()
            raise RuntimeError(f"the CUDA process did not get ready: {line.decode(errors='replace').strip()!r}")
        self.uuid = self.proc.stdout.readline().decode().split()[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="parent directory, e.g. tests/fixtures/nvml/")
    parser.add_argument("--cuda-process", action="store_true", help="hold a CUDA context on GPU 0 during the probe")
    parser.add_argument("--depth", type=int, default=4, help="cgroup tree levels below the root (default 4)")
    parser.add_argument("--max-entries", type=int, default=64, help="cgroup tree entries per directory (default 64)")
    args = parser.parse_args(argv)

    commands: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nodeagent-capture-") as tmp:
        probe_args: list[str] = []
        with contextlib.ExitStack() as stack:
            if args.cuda_process:
                cuda = stack.enter_context(CudaProcess())
                probe_args = ["--pid", str(cuda.proc.pid)]
                commands.append({"command": f"{CUDA_CONTEXT_SCRIPT.name} (pid {cuda.proc.pid})", "gpu": cuda.uuid})
            result = run_probe(Path(tmp) / "probe.json", probe_args)
        commands.append({"command": "python3 -m tests.real_gpu.probe " + " ".join(probe_args), "exit": result.rc})
        if result.unavailable:
            print(
                f"tests.real_gpu.capture: NVML is not available here: {result.reason}; nothing written", file=sys.stderr
            )
            return UNAVAILABLE
        if result.rc != 0 or result.data is None:
            print(f"tests.real_gpu.capture: {result.describe()}", file=sys.stderr)
            return result.rc or 1
        probe = result.data
        out = args.directory / directory_name(probe)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "probe.json", out / "probe.json")

    files = ["probe.json"]

    def write(name: str, text: str) -> None:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files.append(name)

    smi = shutil.which("nvidia-smi", path=real_env().get("PATH"))
    if smi is not None:
        proc = subprocess.run([smi, "-q", "-x"], env=real_env(), capture_output=True, text=True, timeout=300)
        commands.append({"command": "nvidia-smi -q -x", "exit": proc.returncode, "stderr": proc.stderr[-2000:]})
        write("nvidia-smi-q.xml", proc.stdout)
    else:
        commands.append({"command": "nvidia-smi -q -x", "exit": None, "stderr": "nvidia-smi not on PATH"})
    version = PROC_DRIVER / "version"
    if version.exists():
        write("proc-driver-nvidia-version.txt", version.read_text())
    for info in sorted(PROC_DRIVER.glob("gpus/*/information")):
        write(f"proc-driver-nvidia-gpus/{info.parent.name}/information", info.read_text())
    write("proc-self-cgroup.txt", Path("/proc/self/cgroup").read_text())
    write("cgroup-mounts.txt", cgroup_mounts())
    write("cgroup-tree.txt", cgroup_tree(CGROUP_ROOT, args.depth, args.max_entries))
    uname = os.uname()
    manifest = {
        "captured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": uname.release,
        "machine": uname.machine,
        "python": sys.version.split()[0],
        "pynvml_version": probe["pynvml_version"],
        "driver_version": probe["driver_version"],
        "cuda_version": probe["cuda_version"],
        "gpus": [{"index": g["index"], "name": g["name"]} for g in probe["samples"][-1]["gpus"]],
        "cgroup_tree": {"root": str(CGROUP_ROOT), "depth": args.depth, "max_entries": args.max_entries},
        "commands": commands,
        "files": sorted([*files, "MANIFEST.json"]),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
