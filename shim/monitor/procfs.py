"""Readings of one host process from /proc/<pid>, as Kata's per-process families.

Kata's runtime publishes the same set of families for the shim (`kata_shim_`),
the hypervisor (`kata_hypervisor_`) and virtiofsd (`kata_virtiofsd_`):
`proc_status` (item = a /proc/<pid>/status field, lower-cased; sizes in bytes),
`proc_stat` (item = utime, stime, cutime, cstime in clock ticks), `io_stat`
(item = a /proc/<pid>/io field, underscores dropped), `fds`, `threads`, and for
the hypervisor `netdev` (interface, item = recv_*/sent_* of /proc/<pid>/net/dev,
i.e. the counters of the network namespace the process runs in).

Every reader returns None when the process is gone (a dead virtiofsd must not
break a scrape). A whole family set for one process costs a handful of small
reads, well under a millisecond here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from pykata_common.exposition import Family

PROC = "/proc"

# /proc/<pid>/status fields Kata reports, in its order; kB values become bytes
STATUS_ITEMS = (
    "VmPeak",
    "VmSize",
    "VmLck",
    "VmPin",
    "VmHWM",
    "VmRSS",
    "RssAnon",
    "RssFile",
    "RssShmem",
    "VmData",
    "VmStk",
    "VmExe",
    "VmLib",
    "VmPTE",
    "VmPMD",
    "VmSwap",
    "HugetlbPages",
    "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches",
)
_STATUS_WANTED = frozenset(STATUS_ITEMS)
STAT_ITEMS = ("utime", "stime", "cutime", "cstime")
IO_ITEMS = (
    "rchar",
    "wchar",
    "syscr",
    "syscw",
    "read_bytes",
    "write_bytes",
    "cancelled_write_bytes",
)
# /proc/net/dev columns after the interface name, under Kata's item names
NETDEV_ITEMS = (
    "recv_bytes",
    "recv_packets",
    "recv_errs",
    "recv_drop",
    "recv_fifo",
    "recv_frame",
    "recv_compressed",
    "recv_multicast",
    "sent_bytes",
    "sent_packets",
    "sent_errs",
    "sent_drop",
    "sent_fifo",
    "sent_colls",
    "sent_carrier",
    "sent_compressed",
)

# which process a family prefix is about, for the help texts
KINDS = {
    "kata_shim": "the shim daemon",
    "kata_hypervisor": "the hypervisor (QEMU)",
    "kata_virtiofsd": "virtiofsd",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcStat(NamedTuple):
    """The /proc/<pid>/stat fields the families use (times in clock ticks)."""

    state: str
    utime: int
    stime: int
    cutime: int
    cstime: int
    num_threads: int
    start_time: int

    @property
    def cpu_seconds(self) -> float:
        """utime + stime of the process itself, in seconds."""
        return (self.utime + self.stime) / CLOCK_TICKS


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None


def read_stat(pid: int, proc: str = PROC) -> ProcStat | None:
    """/proc/<pid>/stat, or None if the process is gone."""
    text = _read(f"{proc}/{pid}/stat")
    if text is None:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(
        state=fields[0],
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        num_threads=int(fields[17]),
        start_time=int(fields[19]),
    )


def read_status(pid: int, proc: str = PROC) -> dict[str, int] | None:
    """The STATUS_ITEMS fields of /proc/<pid>/status present on this kernel (kB as bytes)."""
    text = _read(f"{proc}/{pid}/status")
    if text is None:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in _STATUS_WANTED:
            parts = rest.split()
            if parts:
                number = int(parts[0])
                values[key] = number * 1024 if len(parts) > 1 and parts[1] == "kB" else number
    return values


def read_io(pid: int, proc: str = PROC) -> dict[str, int] | None:
    """/proc/<pid>/io, or None if the process is gone or its io is not ours to read."""
    try:
        text = _read(f"{proc}/{pid}/io")
    except PermissionError:  # another user's process, without CAP_SYS_PTRACE
        return None
    if text is None:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip():
            values[key.strip()] = int(rest)
    return values


def count_fds(pid: int, proc: str = PROC) -> int | None:
    """Open file descriptors of the process, or None if gone or not ours to list."""
    try:
        return len(os.listdir(f"{proc}/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def read_netdev(pid: int, proc: str = PROC) -> dict[str, tuple[int, ...]] | None:
    """Interface -> the 16 counters of /proc/<pid>/net/dev (the process's netns)."""
    text = _read(f"{proc}/{pid}/net/dev")
    if text is None:
        return None
    devices: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, rest = line.partition(":")
        counters = rest.split()
        if sep and len(counters) >= len(NETDEV_ITEMS):
            devices[name.strip()] = tuple(int(c) for c in counters[: len(NETDEV_ITEMS)])
    return devices


def pss_bytes(pid: int, proc: str = PROC) -> int | None:
    """Proportional set size of the process (smaps_rollup), or None if unavailable.

    Costlier than VmRSS (the kernel walks every mapping): for measurements, not scrapes.
    """
    return rollup_bytes(pid, "Pss", proc)


def rollup_bytes(pid: int, field: str, proc: str = PROC) -> int | None:
    """One field of smaps_rollup (Pss, Pss_Anon, Pss_Shmem...) in bytes, or None."""
    try:
        text = _read(f"{proc}/{pid}/smaps_rollup")
    except PermissionError:
        return None
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def process_families(
    prefix: str,
    pid: int,
    *,
    started: int | None = None,
    netdev: bool | None = None,
    proc: str = PROC,
) -> list[Family]:
    """Kata's per-process families for `pid` under `prefix` ("kata_shim", ...).

    `started` (the start time in ticks recorded when the process was launched)
    guards against a recycled pid; `netdev` defaults to on for the hypervisor
    only, as in Kata. A process that is gone gives no families.
    """
    noun = KINDS.get(prefix, prefix)
    stat = read_stat(pid, proc)
    if stat is None or (started is not None and stat.start_time != started):
        return []
    families: list[Family] = []
    status = read_status(pid, proc)
    if status is not None:
        family = Family(
            f"{prefix}_proc_status",
            f"Fields of /proc/<pid>/status of {noun} (sizes in bytes).",
        )
        for item in STATUS_ITEMS:
            family.add(status.get(item, 0), (("item", item.lower()),))
        families.append(family)
    family = Family(f"{prefix}_proc_stat", f"CPU times of {noun} from /proc/<pid>/stat, in ticks.")
    for item in STAT_ITEMS:
        family.add(getattr(stat, item), (("item", item),))
    families.append(family)
    io = read_io(pid, proc)
    if io is not None:
        family = Family(f"{prefix}_io_stat", f"I/O counters of {noun} from /proc/<pid>/io.")
        for item in IO_ITEMS:
            family.add(io.get(item, 0), (("item", item.replace("_", "")),))
        families.append(family)
    fds = count_fds(pid, proc)
    if fds is not None:
        families.append(Family(f"{prefix}_fds", f"Open file descriptors of {noun}.").add(fds))
    families.append(Family(f"{prefix}_threads", f"Threads of {noun}.").add(stat.num_threads))
    if netdev if netdev is not None else prefix == "kata_hypervisor":
        devices = read_netdev(pid, proc)
        if devices is not None:
            family = Family(
                f"{prefix}_netdev",
                f"Interface counters of the network namespace {noun} runs in.",
            )
            for name, counters in devices.items():
                for item, value in zip(NETDEV_ITEMS, counters, strict=True):
                    family.add(value, (("interface", name), ("item", item)))
            families.append(family)
    return families


def families_for(
    processes: Iterable[tuple[str, int | None, int | None]], proc: str = PROC
) -> list[Family]:
    """The families of several processes: (prefix, pid or None, start time or None) each.

    A missing pid (no virtiofsd with this shared-fs) or a gone process adds nothing.
    """
    families: list[Family] = []
    for prefix, pid, started in processes:
        if pid is not None:
            families.extend(process_families(prefix, pid, started=started, proc=proc))
    return families
