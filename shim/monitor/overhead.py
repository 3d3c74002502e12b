"""Pod overhead: what the sandbox costs the host beyond what its containers use.

Kata's `kata_shim_pod_overhead_memory_in_bytes` is the sandbox's host memory
minus the memory its containers use in the guest, and `kata_shim_pod_overhead_cpu`
the sandbox's host CPU minus the containers' guest CPU over an interval, in
percent of one CPU. Kata reads both from the host sandbox cgroup; pykata has no
such cgroup, so the host side is the sandbox's own processes (shim, QEMU,
virtiofsd): the sum of their VmRSS, and of their utime + stime.

The CPU figure needs two readings: `PodOverhead.sample` gives the rate since
the previous call (Kata samples one second apart after each scrape; here each
scrape is compared with the previous one, which costs no waiting). Prime it with
one call when the sandbox is up, or the first scrape reports 0 %.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pykata_common.exposition import Family
from shim.monitor.procfs import PROC, read_stat, read_status


class Overhead(NamedTuple):
    """One reading: host memory beyond the guest's (bytes), host CPU beyond it (percent)."""

    memory_bytes: float
    cpu_percent: float


class PodOverhead:
    """Tracks one sandbox's overhead between readings."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, proc: str = PROC) -> None:
        self._clock = clock
        self._proc = proc
        self._when: float | None = None
        self._host: dict[tuple[int, int], float] = {}  # (pid, start time) -> cpu seconds
        self._guest_cpu_ns = 0
        self.last = Overhead(0.0, 0.0)
        self._lock = threading.Lock()  # scrapes may sample from worker threads

    def sample(
        self, pids: Iterable[int], *, guest_cpu_ns: int = 0, guest_memory_bytes: int = 0
    ) -> Overhead:
        """Read the host processes `pids` now and return (and keep) the overhead.

        `guest_cpu_ns` is the containers' total CPU time in the guest (the sum of
        their cgroups' usage, a counter), `guest_memory_bytes` their memory usage
        now, both from the agent's container stats. Processes seen only in this
        reading (started since the last one) count from the next reading on.
        Both figures are floored at 0.
        """
        with self._lock:
            return self._sample(pids, guest_cpu_ns, guest_memory_bytes)

    def _sample(self, pids: Iterable[int], guest_cpu_ns: int, guest_memory_bytes: int) -> Overhead:
        now = self._clock()
        host: dict[tuple[int, int], float] = {}
        rss = 0
        for pid in pids:
            stat = read_stat(pid, self._proc)
            if stat is None:
                continue
            host[(pid, stat.start_time)] = stat.cpu_seconds
            status = read_status(pid, self._proc)
            if status is not None:
                rss += status.get("VmRSS", 0)
        cpu = 0.0
        if self._when is not None and now > self._when:
            host_delta = sum(
                seconds - self._host[key] for key, seconds in host.items() if key in self._host
            )
            guest_delta = max(guest_cpu_ns - self._guest_cpu_ns, 0) / 1e9
            cpu = max((host_delta - guest_delta) / (now - self._when) * 100.0, 0.0)
        self._when, self._host, self._guest_cpu_ns = now, host, guest_cpu_ns
        self.last = Overhead(float(max(rss - guest_memory_bytes, 0)), cpu)
        return self.last

    def families(self) -> list[Family]:
        """The two Kata families for the latest reading."""
        return [
            Family(
                "kata_shim_pod_overhead_memory_in_bytes",
                "Host memory (RSS of shim, QEMU, virtiofsd) beyond the containers' guest memory.",
            ).add(self.last.memory_bytes),
            Family(
                "kata_shim_pod_overhead_cpu",
                "Host CPU of the sandbox's processes beyond the containers' guest CPU (percent).",
            ).add(self.last.cpu_percent),
        ]
