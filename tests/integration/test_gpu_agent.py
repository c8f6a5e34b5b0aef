"""The real `nodeagent run` process with the NVML test double (tests/nvml_double) as its libnvidia-ml.so.1: values,
Xid events, a GPU and the driver lost and back, a cycle over its timeout; and `nodeagent doctor` without NVML."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as text_parse

from tests.integration.agent_proc import AgentProcess, free_port, http_get, started_process, wait_until
from tests.nvml_double import SCENARIO_ENV, Field, Gpu, Scenario, Xid, build_or_missing, gpu_uuid, subprocess_env
from tests.nvml_double.build import LIBRARY_NAME
from tests.nvml_double.scenario import DRIVER_NOT_LOADED, GPU_IS_LOST, H100_MEM_TOTAL

pytestmark = pytest.mark.integration

GiB = 1 << 30
UUID0, UUID1 = gpu_uuid(0), gpu_uuid(1)
G0, G1 = (("gpu", "0"), ("uuid", UUID0)), (("gpu", "1"), ("uuid", UUID1))
FAST = ("--set", "collectors.gpu.interval=0.5s", "--set", "jitter=1ms")


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return build_or_missing()


@pytest.fixture
def scenario_path(tmp_path: Path) -> Path:
    return tmp_path / "nvml.scenario"


@contextlib.contextmanager
def gpu_agent(lib_dir: Path, scenario_path: Path, tmp_path: Path, args: Sequence[str] = FAST) -> Iterator[AgentProcess]:
    """``nodeagent run`` whose pynvml finds the double through LD_LIBRARY_PATH; stopped (TERM, then KILL) after."""
    port = free_port()
    log_path = str(tmp_path / f"nodeagent-{port}.log")
    prefix = [sys.executable, "-m", "nodeagent"]
    url = f"http://127.0.0.1:{port}"
    with started_process(
        [*prefix, "run", "--listen", f"127.0.0.1:{port}", *args],
        log_path,
        lambda: http_get(url + "/readyz")[0] == 200,
        "the agent to become ready",
        env=subprocess_env(lib_dir, scenario_path),
    ) as proc:
        yield AgentProcess(proc, port, log_path)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(agent: AgentProcess) -> Samples:
    status, _headers, body = http_get(agent.url + "/metrics")
    assert 200 == status
    return {(s.name, tuple(s.labels.items())): s.value for f in text_parse(body.decode()) for s in f.samples}


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def by_gpu(samples: Samples, name: str, **match: str) -> dict[str, float]:
    """``gpu`` label -> value of one family, for the series whose other labels include ``match``."""
    out = {}
    for labels, v in series(samples, name).items():
        lb = dict(labels)
        if all(lb.get(k) == want for k, want in match.items()):
            out[lb["gpu"]] = v
    return out


def collector_state(samples: Samples) -> dict[str, float]:
    return {
        "success": samples[("nodeagent_collector_success", (("collector", "gpu"),))],
        "timeouts": samples[("nodeagent_collector_failures_total", (("collector", "gpu"), ("reason", "timeout")))],
    }


def records(agent: AgentProcess) -> list[dict[str, Any]]:
    """The agent's JSON log documents (the double's stderr lines, if any, are not JSON and are left out)."""
    out = []
    for line in agent.log().splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


def two_gpus(**gpu1: Any) -> list[Gpu]:
    return [
        Gpu(power_mw=123_456, util_gpu=87, util_mem=41, mem_used=40 * GiB, fields=[Field(82, 47)]),
        Gpu(power_mw=287_500, util_gpu=12, util_mem=5, mem_used=3 * GiB, fields=[Field(82, 51)], **gpu1),
    ]


def test_values_equal_the_scenario_and_an_xid_is_counted_and_logged_once(
    lib_dir: Path, scenario_path: Path, tmp_path: Path
) -> None:
    """Two GPUs with distinct values: each series equals the scenario in base units; one queued Xid on GPU 1 is
    counted once and logged once as an ECS event with a trace id."""
    Scenario(gpus=two_gpus(xids=[Xid(1, 79)])).write(scenario_path)
    with gpu_agent(lib_dir, scenario_path, tmp_path) as agent:

        def counted() -> bool:
            got = scrape(agent)
            return bool(series(got, "nodeagent_gpu_xid_errors_total")) and len(by_gpu(got, "nodeagent_gpu_up")) == 2

        wait_until(counted, 10, "the Xid counter and both GPUs in /metrics")
        time.sleep(1.2)  # one more 1 s event wait: a second delivery would show now
        got = scrape(agent)
        docs = records(agent)

    assert {G0: 1.0, G1: 1.0} == series(got, "nodeagent_gpu_up")
    assert {"0": 123.456, "1": 287.5} == by_gpu(got, "nodeagent_gpu_power_watts")
    assert {"0": 0.87, "1": 0.12} == by_gpu(got, "nodeagent_gpu_utilization_ratio", engine="gpu")
    assert {"0": 0.41, "1": 0.05} == by_gpu(got, "nodeagent_gpu_utilization_ratio", engine="memory")
    assert {"0": 40.0 * GiB, "1": 3.0 * GiB} == by_gpu(got, "nodeagent_gpu_memory_used_bytes")
    assert {"0": float(H100_MEM_TOTAL), "1": float(H100_MEM_TOTAL)} == by_gpu(got, "nodeagent_gpu_memory_total_bytes")
    assert {"0": 47.0, "1": 51.0} == by_gpu(got, "nodeagent_gpu_temperature_celsius", sensor="memory")
    assert {"0": 31.0, "1": 31.0} == by_gpu(got, "nodeagent_gpu_temperature_celsius", sensor="gpu")
    info = {dict(labels)["gpu"]: (dict(labels), v) for labels, v in series(got, "nodeagent_gpu_info").items()}
    common = {
        "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "mig_mode": "disabled",
        "compute_mode": "default",
        "persistence_mode": "enabled",
    }
    assert {
        "0": (
            {
                "gpu": "0",
                "uuid": UUID0,
                "pci_bus_id": "00000000:18:00.0",
                "device": "nvidia0",
                "serial": "1654922000000",
                **common,
            },
            1.0,
        ),
        "1": (
            {
                "gpu": "1",
                "uuid": UUID1,
                "pci_bus_id": "00000000:2A:00.0",
                "device": "nvidia1",
                "serial": "1654922000001",
                **common,
            },
            1.0,
        ),
    } == info

    xid_docs = [d for d in docs if d.get("event.action") == "gpu_xid"]
    assert 1 == len(xid_docs), xid_docs
    doc = xid_docs[0]
    assert {
        "log.level": "error",
        "event.kind": "event",
        "event.category": ["host", "driver"],
        "event.type": ["error"],
        "event.action": "gpu_xid",
        "event.code": "79",
        "event.dataset": "nodeagent.gpu",
        "nodeagent.gpu.uuid": UUID1,
        "nodeagent.gpu.xid": 79,
    } == {
        k: doc.get(k)
        for k in (
            "log.level",
            "event.kind",
            "event.category",
            "event.type",
            "event.action",
            "event.code",
            "event.dataset",
            "nodeagent.gpu.uuid",
            "nodeagent.gpu.xid",
        )
    }
    assert 32 == len(doc["trace.id"]) and 16 == len(doc["span.id"])
    assert int(doc["trace.id"], 16) and int(doc["span.id"], 16)

    # Regression guard: an earlier gpu.py started the Xid watcher before the first cycle had mapped index -> uuid,
    # so the first Xid came out as {gpu="",...} and "nodeagent.gpu.index":"" ("GPU  (GPU-...) reported Xid 79").
    assert {(("gpu", "1"), ("uuid", UUID1), ("xid", "79")): 1.0} == series(got, "nodeagent_gpu_xid_errors_total")
    assert "1" == doc["nodeagent.gpu.index"]
    assert f"GPU 1 ({UUID1}) reported Xid 79" == doc["message"]


def test_a_lost_gpu_is_down_while_the_others_stay_and_it_recovers(
    lib_dir: Path, scenario_path: Path, tmp_path: Path
) -> None:
    """GPU 1 answers every call with GPU_IS_LOST: nodeagent_gpu_up{gpu="1"} 0 with its uuid kept, its other series
    gone, GPU 0 unchanged, the collector still succeeding; restored, GPU 1 is up again after re-initialisation."""
    Scenario(gpus=two_gpus()).write(scenario_path)
    with gpu_agent(lib_dir, scenario_path, tmp_path) as agent:
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 1}, 10, "both GPUs up")
        Scenario(gpus=two_gpus(errors={"*": GPU_IS_LOST})).write(scenario_path)
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 0}, 10, "GPU 1 down")
        lost = scrape(agent)
        Scenario(gpus=two_gpus()).write(scenario_path)
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 1}, 10, "GPU 1 up again")
        wait_until(lambda: "1" in by_gpu(scrape(agent), "nodeagent_gpu_power_watts"), 5, "GPU 1's power again")
        back = scrape(agent)

    assert {G0: 1.0, G1: 0.0} == series(lost, "nodeagent_gpu_up")
    assert {"0": 123.456} == by_gpu(lost, "nodeagent_gpu_power_watts")
    assert {"0": 47.0} == by_gpu(lost, "nodeagent_gpu_temperature_celsius", sensor="memory")
    assert ["0"] == sorted(by_gpu(lost, "nodeagent_gpu_info"))
    assert 1.0 == collector_state(lost)["success"]
    assert {G0: 1.0, G1: 1.0} == series(back, "nodeagent_gpu_up")
    assert {"0": 123.456, "1": 287.5} == by_gpu(back, "nodeagent_gpu_power_watts")


def test_the_driver_going_away_marks_every_gpu_down_and_comes_back(
    lib_dir: Path, scenario_path: Path, tmp_path: Path
) -> None:
    """After GPUs were seen, every NVML call and nvmlInit fail with DRIVER_NOT_LOADED: both GPUs report up 0 (not
    "no data"), /metrics keeps answering; with the driver back both are up again."""
    Scenario(gpus=two_gpus()).write(scenario_path)
    with gpu_agent(lib_dir, scenario_path, tmp_path) as agent:
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 1}, 10, "both GPUs up")
        Scenario(gpus=two_gpus(), init_error=DRIVER_NOT_LOADED, errors={"*": DRIVER_NOT_LOADED}).write(scenario_path)
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 0, "1": 0}, 10, "both GPUs down")
        time.sleep(1.1)  # two more cycles, now through the nvmlInit failure as well
        gone = scrape(agent)
        Scenario(gpus=two_gpus()).write(scenario_path)
        wait_until(
            lambda: by_gpu(scrape(agent), "nodeagent_gpu_power_watts") == {"0": 123.456, "1": 287.5},
            10,
            "both GPUs' power again",
        )
        back = scrape(agent)

    assert {G0: 0.0, G1: 0.0} == series(gone, "nodeagent_gpu_up")
    assert {} == series(gone, "nodeagent_gpu_power_watts")
    assert {} == series(gone, "nodeagent_gpu_info")
    assert 1.0 == collector_state(gone)["success"]
    assert 1.0 == gone[("nodeagent_collector_has_data", (("collector", "gpu"),))]
    assert {G0: 1.0, G1: 1.0} == series(back, "nodeagent_gpu_up")


def test_a_cycle_over_its_timeout_fails_alone_and_the_series_come_back(
    lib_dir: Path, scenario_path: Path, tmp_path: Path
) -> None:
    """nvmlDeviceGetPowerUsage on GPU 0 takes 3 s against a 1 s gpu timeout: the cycle is counted as a timeout,
    success 0, the gpu series dropped, /metrics keeps answering at once with the other collectors; without the
    delay the gpu series come back."""
    Scenario(gpus=two_gpus()).write(scenario_path)
    args = ("--set", "collectors.gpu.interval=1s", "--set", "collectors.gpu.timeout=1s", "--set", "jitter=1ms")
    with gpu_agent(lib_dir, scenario_path, tmp_path, args) as agent:
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 1}, 10, "both GPUs up")
        slow = two_gpus()
        slow[0].delays = {"nvmlDeviceGetPowerUsage": 3000}
        Scenario(gpus=slow).write(scenario_path)
        scrape_seconds: list[float] = []

        def timed_out() -> bool:
            started = time.monotonic()
            got = scrape(agent)
            scrape_seconds.append(time.monotonic() - started)
            return collector_state(got)["timeouts"] >= 1

        wait_until(timed_out, 10, "a gpu cycle to time out")
        during = scrape(agent)
        Scenario(gpus=two_gpus()).write(scenario_path)
        wait_until(lambda: by_gpu(scrape(agent), "nodeagent_gpu_up") == {"0": 1, "1": 1}, 10, "the gpu series back")
        back = scrape(agent)
        docs = records(agent)

    assert max(scrape_seconds) < 0.5, scrape_seconds
    assert {"success": 0.0, "timeouts": 1.0} == collector_state(during)
    assert {} == series(during, "nodeagent_gpu_up")
    assert {} == series(during, "nodeagent_gpu_power_watts")
    assert ("node_load1", ()) in during
    assert 1.0 == collector_state(back)["success"]
    assert {"0": 123.456, "1": 287.5} == by_gpu(back, "nodeagent_gpu_power_watts")
    failed = [d for d in docs if d.get("message") == "collector.failed" and d.get("nodeagent.collector") == "gpu"]
    assert {"nodeagent.reason": "timeout", "error.message": "cycle exceeded its timeout of 1s"} == {
        k: failed[0].get(k) for k in ("nodeagent.reason", "error.message")
    }
    # While the NVML thread is still stuck, the next cycles fail at once instead of queueing behind it.
    busy = "NvmlBusy: the previous NVML pass has not returned (a GPU or the driver is not answering)"
    assert [("timeout", busy)] == [(d.get("nodeagent.reason"), d.get("error.message")) for d in failed[1:2]]
    assert back[("nodeagent_collector_failures_total", (("collector", "gpu"), ("reason", "timeout")))] >= 2
    assert any(d.get("message") == "collector.recovered" and d.get("nodeagent.collector") == "gpu" for d in docs)


def test_doctor_without_nvml_explains_the_missing_library(tmp_path: Path) -> None:
    """`nodeagent doctor` on a host without libnvidia-ml.so.1: gpu has no data, says why and how to fix it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", SCENARIO_ENV)}
    env["LD_LIBRARY_PATH"] = ":".join(
        d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d and not (Path(d) / LIBRARY_NAME).exists()
    )
    probe = subprocess.run(
        [sys.executable, "-c", f"import ctypes; ctypes.CDLL({LIBRARY_NAME!r})"],
        env=env,
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:
        pytest.skip("this host has an NVIDIA library (libnvidia-ml.so.1 loads): nothing to explain")
    proc = subprocess.run(
        [sys.executable, "-m", "nodeagent", "doctor"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    lines = proc.stdout.splitlines()
    gpu = next((i for i, line in enumerate(lines) if " gpu: " in line), len(lines))

    assert [
        "  NODATA  gpu: libnvidia-ml.so.1 not found (no NVIDIA driver on this host, or not mounted into the agent's "
        "container)",
        "          hint: install the NVIDIA driver, or mount it and /dev/nvidia* into the agent's container",
    ] == lines[gpu : gpu + 2], proc.stdout + proc.stderr
