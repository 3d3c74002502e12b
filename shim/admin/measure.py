"""What a set of host processes costs over a few seconds: peak PSS and CPU.

Memory is PSS from /proc/<pid>/smaps_rollup (shared pages split between the
processes that map them, so the figures of several processes add up), sampled
every `interval` seconds; the peak of the total counts. Where smaps_rollup cannot
be read (another user's process without CAP_SYS_PTRACE, an old kernel) VmRSS
stands in: never less than PSS, so a figure built on it still covers the cost.
CPU is the utime + stime the processes used between the first and last reading,
divided by the wall time between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shim.monitor.procfs import PROC, pss_bytes, read_stat, read_status

_GONE = ("Z", "X")  # a zombie has exited: its memory is gone, its pid not yet


class MeasureError(Exception):
    """A process to measure is gone (or was never there)."""


@dataclass
class ProcessCost:
    """One process: its role (shim, qemu, virtiofsd), peak memory and CPU used."""

    role: str
    pid: int
    memory_bytes: int
    memory_kind: str  # "PSS" or "VmRSS"
    cpu_seconds: float


@dataclass
class Measurement:
    """The processes of one pod, measured together."""

    processes: list[ProcessCost]
    seconds: float  # wall time between the first and the last CPU reading
    memory_bytes: int  # peak of the summed memory over the samples
    samples: int

    @property
    def cpu_cores(self) -> float:
        """Average CPU over the measurement, in CPUs (1.0 = one CPU busy all the time)."""
        if self.seconds <= 0:
            return 0.0
        return sum(p.cpu_seconds for p in self.processes) / self.seconds

    def memory_by_role(self) -> dict[str, int]:
        """Peak memory per role (summed over that role's processes), in role order."""
        out: dict[str, int] = {}
        for p in self.processes:
            out[p.role] = out.get(p.role, 0) + p.memory_bytes
        return out

    @property
    def memory_kinds(self) -> set[str]:
        return {p.memory_kind for p in self.processes}


def _memory(pid: int, proc: str) -> tuple[int, str] | None:
    pss = pss_bytes(pid, proc)
    if pss is not None:
        return pss, "PSS"
    status = read_status(pid, proc)
    if status is None or "VmRSS" not in status:
        return None
    return status["VmRSS"], "VmRSS"


def measure(
    pids: Mapping[str, Sequence[int]],
    seconds: float = 5.0,
    *,
    interval: float = 1.0,
    proc: str = PROC,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Measurement:
    """Measure the processes `pids` (role -> pids) for `seconds`; blocks that long.

    Raises MeasureError when a process is missing at the start or exits before
    the end (a pod whose processes come and go is not an idle pod).
    """
    order = [(role, pid) for role, group in pids.items() for pid in group]
    if not order:
        raise MeasureError("no processes to measure")
    first: dict[int, tuple[int, float]] = {}  # pid -> (start time, cpu seconds)
    for role, pid in order:
        stat = read_stat(pid, proc)
        if stat is None or stat.state in _GONE:
            raise MeasureError(f"{role} (pid {pid}) is not running")
        first[pid] = (stat.start_time, stat.cpu_seconds)
    began = clock()
    peak: dict[int, tuple[int, str]] = {}
    peak_total = 0
    samples = 0
    deadline = began + seconds
    while True:
        total = 0
        for role, pid in order:
            reading = _memory(pid, proc)
            if reading is None:
                raise MeasureError(f"{role} (pid {pid}) exited during the measurement")
            total += reading[0]
            if reading[0] > peak.get(pid, (-1, ""))[0]:
                peak[pid] = reading
        peak_total = max(peak_total, total)
        samples += 1
        left = deadline - clock()
        if left <= 0:
            break
        sleep(min(interval, left))
    ended = clock()
    costs: list[ProcessCost] = []
    for role, pid in order:
        stat = read_stat(pid, proc)
        started, cpu_before = first[pid]
        if stat is None or stat.state in _GONE or stat.start_time != started:
            raise MeasureError(f"{role} (pid {pid}) exited during the measurement")
        memory, kind = peak[pid]
        costs.append(ProcessCost(role, pid, memory, kind, stat.cpu_seconds - cpu_before))
    return Measurement(costs, ended - began, peak_total, samples)
