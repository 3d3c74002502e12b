"""Many pods through one containerd: pods at once and `ctr run --rm` cycles in a row, with
the checks that nothing leaks (processes, mounts, taps, tc filters, state dirs, shim
sockets) and a sampler of the host memory pykata's processes take.

Used by the short CI version (integration/test_load.py) and by bench/load_bench.py.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.containerd_env import PrivateContainerd, _mounts_under, _pids_with_arg
from integration.pykata_env import RUNTIME, SHIM_NAME, STATE_ROOT, leftovers
from integration.test_network_env import NetnsPair, snapshot
from shim.monitor.procfs import pss_bytes

SHIM_SOCKET_DIR = Path("/run/containerd/s")
RUNC = "io.containerd.runc.v2"
POD_SCRIPT = "echo pod $POD_INDEX; ip -o -4 addr show eth0 | grep -o 'inet [0-9.]*'"


def pod_netns(index: int) -> NetnsPair:
    """A node/pod netns pair with one veth, 198.18.<index>.0/24, no route out."""
    pair = NetnsPair(tag=f"ld{os.getpid() % 10000}x{index}").create()
    pair.add_veth(pod_addr=f"198.18.{index}.2/24", node_addr=f"198.18.{index}.1/24")
    return pair


def shim_sockets() -> set[str]:
    return set(os.listdir(SHIM_SOCKET_DIR)) if SHIM_SOCKET_DIR.is_dir() else set()


def pykata_pids() -> list[int]:
    """Every shim daemon, QEMU and virtiofsd of pykata on this host."""
    shims = [p for p in _pids_with_arg(SHIM_NAME) if p != os.getpid()]
    return sorted(set(shims) | set(_pids_with_arg(str(STATE_ROOT) + "/")))


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Samples the summed PSS of pykata's processes, the number of QEMUs and how far the
    machine's MemAvailable fell, until stopped."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.peak_kib = 0
        self.peak_vms = 0
        self.baseline_available_kib = mem_available_kib()
        self.peak_drop_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = pykata_pids()
            self.peak_kib = max(self.peak_kib, sum((pss_bytes(p) or 0) >> 10 for p in pids))
            self.peak_vms = max(self.peak_vms, len(_pids_with_arg("qemu-system")))
            drop = self.baseline_available_kib - mem_available_kib()
            self.peak_drop_kib = max(self.peak_drop_kib, drop)
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class PodRun:
    index: int
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def correct(self) -> bool:
        """The container said its index and saw its own address on eth0."""
        lines = self.stdout.split()
        return self.returncode == 0 and f"198.18.{self.index}.2" in self.stdout and (
            lines[:2] == ["pod", str(self.index)]
        )


@dataclass
class LoadReport:
    pods_at_once: list[PodRun] = field(default_factory=list)
    at_once_seconds: float = 0.0
    cycles: list[PodRun] = field(default_factory=list)
    runc_cycles: list[PodRun] = field(default_factory=list)  # the same pods with runc
    peak_pss_mib: float = 0.0
    peak_machine_mib: float = 0.0  # the largest fall of MemAvailable
    peak_vms: int = 0

    def cycle_seconds(self, runs: list[PodRun] | None = None) -> dict[str, float]:
        times = sorted(run.seconds for run in (self.cycles if runs is None else runs))
        if not times:
            return {}
        return {
            "median": statistics.median(times),
            "p90": times[int(0.9 * (len(times) - 1))],
            "max": times[-1],
            "total": sum(times),
        }


def run_pod(cd: PrivateContainerd, image: str, index: int, pair: NetnsPair,
            config: Path | None, name: str) -> subprocess.Popen:
    """`ctr run --rm` of one pod; config None: with runc instead of pykata."""
    runtime = ["--runtime", RUNC] if config is None else [
        "--runtime", RUNTIME, "--runtime-config-path", str(config)]
    argv = cd.ctr_argv(
        "run", *runtime, "--rm", "--with-ns", f"network:{pair.pod_path}",
        "--env", f"POD_INDEX={index}", image, name, "sh", "-c", POD_SCRIPT,
    )
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, index: int, started: float, timeout: float) -> PodRun:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(ctr run did not end within {timeout:.0f} s)"
    return PodRun(index, time.monotonic() - started, proc.returncode, out, err)


def pods_at_once(cd, image, pairs: list[NetnsPair], config: Path, timeout: float) -> list[PodRun]:
    started = time.monotonic()
    procs = [run_pod(cd, image, i, pair, config, f"load-{os.getpid()}-a{i}")
             for i, pair in enumerate(pairs)]
    return [finish(proc, i, started, timeout) for i, proc in enumerate(procs)]


def cycles(cd, image, pair: NetnsPair, index: int, count: int, config: Path | None,
           timeout: float) -> list[PodRun]:
    runs = []
    for n in range(count):
        started = time.monotonic()
        tag = "c" if config is not None else "r"
        proc = run_pod(cd, image, index, pair, config, f"load-{os.getpid()}-{tag}{n}")
        runs.append(finish(proc, index, started, timeout))
    return runs


def netns_state(pairs: list[NetnsPair]) -> dict[str, dict]:
    """Links, qdiscs and filters of every pod netns: what pykata must give back as it was."""
    return {pair.pod: snapshot(pair.pod_path) for pair in pairs}


def leaks(cd: PrivateContainerd, sockets_before: set[str], netns_before: dict[str, dict],
          pairs: list[NetnsPair], wait: float = 30.0) -> dict[str, object]:
    """What is left once every pod is gone (waits up to `wait` s for asynchronous teardown)."""
    deadline = time.monotonic() + wait
    while True:
        found: dict[str, object] = dict(leftovers())
        bundle_mounts = _mounts_under(cd.state)
        if bundle_mounts:
            found["bundle mounts"] = bundle_mounts
        new_sockets = sorted(shim_sockets() - sockets_before)
        if new_sockets:
            found["shim sockets"] = new_sockets
        changed = {
            name: {k: v for k, v in now.items() if v != netns_before[name].get(k)}
            for name, now in netns_state(pairs).items()
            if now != netns_before[name]
        }
        if changed:
            found["pod netns changed"] = changed
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def write_config(path: Path, timeout: int) -> Path:
    """A runtime config for loaded hosts: the agent may take long to answer under TCG."""
    path.write_text(f"[agent.kata]\ndial_timeout = {timeout}\n\n"
                    f"[runtime]\ncreate_container_timeout = {timeout}\n")
    return path


def run_load(cd: PrivateContainerd, image: str, *, pods: int, cycle_count: int, workdir: Path,
             runc_cycles: int = 0, dial_timeout: int = 300,
             timeout: float = 900) -> tuple[LoadReport, dict]:
    """`pods` pods at once, then `cycle_count` cycles in a row (and `runc_cycles` with runc,
    for the ratio); the report and the leaks."""
    config = write_config(workdir / "load.toml", dial_timeout)
    pairs = [pod_netns(i) for i in range(max(pods, 1))]
    try:
        before_sockets = shim_sockets()
        before_netns = netns_state(pairs)
        report = LoadReport()
        with MemorySampler() as sampler:
            t0 = time.monotonic()
            report.pods_at_once = pods_at_once(cd, image, pairs[:pods], config, timeout)
            report.at_once_seconds = time.monotonic() - t0
            report.cycles = cycles(cd, image, pairs[0], 0, cycle_count, config, timeout)
        report.runc_cycles = cycles(cd, image, pairs[0], 0, runc_cycles, None, timeout)
        report.peak_pss_mib = sampler.peak_kib / 1024
        report.peak_vms = sampler.peak_vms
        report.peak_machine_mib = sampler.peak_drop_kib / 1024
        left = leaks(cd, before_sockets, before_netns, pairs)
    finally:
        for pair in pairs:
            pair.delete()
    return report, left
