"""GetMetrics: the agent's own process and the guest's /proc, under Kata's family names.

Kata's agent answers with Prometheus text (0.0.4) holding `kata_agent_*` (its
own process) and `kata_guest_*` (the whole guest) families; the shim adds the
sandbox labels and passes them on. Names, labels and units follow Kata's agent:

- kata_agent_scrape_count (counter), kata_agent_threads, kata_agent_total_time
  (s), kata_agent_total_vm and kata_agent_total_rss (bytes);
- kata_agent_proc_status{item}: /proc/self/status fields, lower-cased, in kB
  as the file says (Kata's agent does not convert them);
- kata_agent_proc_stat{item}: utime, stime, cutime, cstime in clock ticks;
- kata_agent_io_stat{item}: /proc/self/io;
- kata_guest_load{item=load1|load5|load15}, kata_guest_tasks{item=cur|max};
- kata_guest_cpu_time{cpu=total|0|1...,item}: milliseconds;
- kata_guest_vm_stat{item}: every /proc/vmstat counter;
- kata_guest_netdev_stat{interface,item}, kata_guest_diskstat{disk,item};
- kata_guest_meminfo{item}: /proc/meminfo in bytes (counts stay counts).

A file that cannot be read leaves its family empty instead of failing the
scrape. The writer is shared with the shim (pykata_common/exposition.py, shipped
in the guest image), so host and guest pages are written the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from pykata_common.exposition import Family, Sample, render

log = logging.getLogger("agent.metrics")

PROC = "/proc"

# /proc/self/status field -> Kata's item
STATUS_ITEMS = {
    "VmPeak": "vmpeak",
    "VmSize": "vmsize",
    "VmLck": "vmlck",
    "VmPin": "vmpin",
    "VmHWM": "vmhwm",
    "VmRSS": "vmrss",
    "RssAnon": "rssanon",
    "RssFile": "rssfile",
    "RssShmem": "rssshmem",
    "VmData": "vmdata",
    "VmStk": "vmstk",
    "VmExe": "vmexe",
    "VmLib": "vmlib",
    "VmPTE": "vmpte",
    "VmSwap": "vmswap",
    "HugetlbPages": "hugetlbpages",
    "voluntary_ctxt_switches": "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches": "nonvoluntary_ctxt_switches",
}
IO_ITEMS = (
    "rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes",
)  # fmt: skip
# /proc/stat cpu columns, in order
CPU_ITEMS = (
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice",
)  # fmt: skip
NETDEV_ITEMS = tuple(
    f"{way}_{what}"
    for way, names in (
        ("recv", ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")),
        ("sent", ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")),
    )
    for what in names
)
# /proc/diskstats columns after major, minor and name
DISK_ITEMS = (
    "reads", "merged", "sectors_read", "time_reading", "writes", "writes_merged",
    "sectors_written", "time_writing", "in_progress", "time_in_progress",
    "weighted_time_in_progress", "discards", "discards_merged", "sectors_discarded",
    "time_discarding", "flushes", "time_flushing",
)  # fmt: skip
# Kata's item -> /proc/meminfo field; a field this kernel lacks reads 0, as in Kata
MEMINFO_ITEMS = {
    "mem_total": "MemTotal",
    "mem_free": "MemFree",
    "mem_available": "MemAvailable",
    "buffers": "Buffers",
    "cached": "Cached",
    "swap_cached": "SwapCached",
    "active": "Active",
    "inactive": "Inactive",
    "active_anon": "Active(anon)",
    "inactive_anon": "Inactive(anon)",
    "active_file": "Active(file)",
    "inactive_file": "Inactive(file)",
    "unevictable": "Unevictable",
    "mlocked": "Mlocked",
    "high_total": "HighTotal",
    "high_free": "HighFree",
    "low_total": "LowTotal",
    "low_free": "LowFree",
    "mmap_copy": "MmapCopy",
    "swap_total": "SwapTotal",
    "swap_free": "SwapFree",
    "dirty": "Dirty",
    "writeback": "Writeback",
    "anon_pages": "AnonPages",
    "mapped": "Mapped",
    "shmem": "Shmem",
    "slab": "Slab",
    "s_reclaimable": "SReclaimable",
    "s_unreclaim": "SUnreclaim",
    "kernel_stack": "KernelStack",
    "page_tables": "PageTables",
    "quicklists": "Quicklists",
    "nfs_unstable": "NFS_Unstable",
    "bounce": "Bounce",
    "writeback_tmp": "WritebackTmp",
    "commit_limit": "CommitLimit",
    "committed_as": "Committed_AS",
    "vmalloc_total": "VmallocTotal",
    "vmalloc_used": "VmallocUsed",
    "vmalloc_chunk": "VmallocChunk",
    "hardware_corrupted": "HardwareCorrupted",
    "anon_hugepages": "AnonHugePages",
    "shmem_hugepages": "ShmemHugePages",
    "shmem_pmd_mapped": "ShmemPmdMapped",
    "cma_total": "CmaTotal",
    "cma_free": "CmaFree",
    "hugepages_total": "HugePages_Total",
    "hugepages_free": "HugePages_Free",
    "hugepages_rsvd": "HugePages_Rsvd",
    "hugepages_surp": "HugePages_Surp",
    "hugepagesize": "Hugepagesize",
    "direct_map_4k": "DirectMap4k",
    "direct_map_4M": "DirectMap4M",
    "direct_map_2M": "DirectMap2M",
    "direct_map_1G": "DirectMap1G",
    "hugetlb": "Hugetlb",
    "per_cpu": "Percpu",
    "k_reclaimable": "KReclaimable",
}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        log.debug("metrics: cannot read %s: %s", path, exc)
        return None


def _gauge(name: str, help: str) -> Family:
    return Family(name, help, "gauge")


def _put(family: Family, value: float, labels: tuple[tuple[str, str], ...] = ()) -> None:
    """Family.add without its label-name checks: the names here are fixed and valid,
    and the guest runs this under TCG (a page has hundreds of samples)."""
    family.samples.append(Sample("", labels, value))


# -- the agent's own process ------------------------------------------------------------
def agent_families(proc: str = PROC, pid: str = "self") -> list[Family]:
    """kata_agent_*: threads, times, memory, status, stat and io of this process."""
    threads = _gauge("kata_agent_threads", "Threads of the agent process.")
    total_time = _gauge("kata_agent_total_time", "CPU time of the agent (user + system), s.")
    total_vm = _gauge("kata_agent_total_vm", "Virtual memory size of the agent, bytes.")
    total_rss = _gauge("kata_agent_total_rss", "Resident set size of the agent, bytes.")
    status = _gauge("kata_agent_proc_status", "Agent /proc/<pid>/status fields (sizes in kB).")
    stat = _gauge("kata_agent_proc_stat", "Agent CPU times from /proc/<pid>/stat, clock ticks.")
    io = _gauge("kata_agent_io_stat", "Agent I/O counters from /proc/<pid>/io.")
    base = f"{proc}/{pid}"
    text = _read(f"{base}/stat")
    if text is not None:
        # comm may hold spaces and parentheses: the fields start after the last ')'
        fields = text[text.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        threads.add(int(fields[17]))
        total_time.add((utime + stime) / ticks)
        total_vm.add(int(fields[20]))
        total_rss.add(int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))
        for item, value in zip(("utime", "stime", "cutime", "cstime"),
                               (utime, stime, cutime, cstime), strict=True):  # fmt: skip
            _put(stat, value, (("item", item),))
    text = _read(f"{base}/status")
    if text is not None:
        found = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in STATUS_ITEMS and rest.split():
                found[key] = int(rest.split()[0])
        for key, item in STATUS_ITEMS.items():
            _put(status, found.get(key, 0), (("item", item),))
    text = _read(f"{base}/io")
    if text is not None:
        values = _colon_table(text)
        for item in IO_ITEMS:
            _put(io, values.get(item, 0), (("item", item),))
    return [threads, total_time, total_vm, total_rss, status, io, stat]


def _colon_table(text: str) -> dict[str, int]:
    """`key: number [unit]` lines (io, meminfo) -> {key: number}."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            try:
                number = int(parts[0])
            except ValueError:
                continue
            values[key.strip()] = number * 1024 if parts[1:2] == ["kB"] else number
    return values


# -- the guest ------------------------------------------------------------------------------
def guest_families(proc: str = PROC) -> list[Family]:
    """kata_guest_*: load, tasks, cpu time, vmstat, network, disks, memory."""
    return [*_load(proc), _cpu_time(proc), _vm_stat(proc), _netdev(proc), _diskstat(proc),
            _meminfo(proc)]  # fmt: skip


def _load(proc: str) -> list[Family]:
    load = _gauge("kata_guest_load", "Guest load averages.")
    tasks = _gauge("kata_guest_tasks", "Guest scheduling entities: runnable now (cur), all (max).")
    text = _read(f"{proc}/loadavg")
    if text is not None:
        parts = text.split()
        for item, value in zip(("load1", "load5", "load15"), parts[:3], strict=True):
            _put(load, float(value), (("item", item),))
        cur, _, total = parts[3].partition("/")
        _put(tasks, int(cur), (("item", "cur"),))
        _put(tasks, int(total), (("item", "max"),))
    return [load, tasks]


def _cpu_time(proc: str) -> Family:
    family = _gauge("kata_guest_cpu_time", "Guest CPU time per state, ms (cpu=total: all CPUs).")
    text = _read(f"{proc}/stat")
    if text is None:
        return family
    to_ms = 1000 / os.sysconf("SC_CLK_TCK")
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *columns = line.split()
        cpu = name[3:] or "total"
        for i, item in enumerate(CPU_ITEMS):
            ticks = int(columns[i]) if i < len(columns) else 0
            _put(family, int(ticks * to_ms), (("cpu", cpu), ("item", item)))
    return family


def _vm_stat(proc: str) -> Family:
    family = _gauge("kata_guest_vm_stat", "Guest virtual memory counters from /proc/vmstat.")
    for key, value in _pairs(_read(f"{proc}/vmstat")):
        _put(family, value, (("item", key),))
    return family


def _pairs(text: str | None) -> Iterator[tuple[str, int]]:
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            yield parts[0], int(parts[1])


def _netdev(proc: str) -> Family:
    family = _gauge("kata_guest_netdev_stat", "Guest network interface counters.")
    text = _read(f"{proc}/net/dev")
    for line in (text or "").splitlines()[2:]:  # two header lines
        name, _, rest = line.partition(":")
        columns = rest.split()
        if len(columns) < len(NETDEV_ITEMS):
            continue
        for item, value in zip(NETDEV_ITEMS, columns, strict=False):
            _put(family, int(value), (("interface", name.strip()), ("item", item)))
    return family


def _diskstat(proc: str) -> Family:
    family = _gauge("kata_guest_diskstat", "Guest block device statistics.")
    text = _read(f"{proc}/diskstats")
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        columns = parts[3:]
        for i, item in enumerate(DISK_ITEMS):
            # older kernels lack the discard (4.18) and flush (5.5) columns: 0, as in Kata
            value = int(columns[i]) if i < len(columns) else 0
            _put(family, value, (("disk", parts[2]), ("item", item)))
    return family


def _meminfo(proc: str) -> Family:
    family = _gauge("kata_guest_meminfo", "Guest memory from /proc/meminfo, bytes.")
    text = _read(f"{proc}/meminfo")
    if text is None:
        return family
    values = _colon_table(text)
    for item, key in MEMINFO_ITEMS.items():
        _put(family, values.get(key, 0), (("item", item),))
    return family


class Metrics:
    """The page GetMetrics answers, and the scrape count Kata keeps with it."""

    def __init__(self, proc: str = PROC) -> None:
        self.proc = proc
        self.scrapes = 0

    def page(self) -> str:
        """Prometheus text: kata_agent_scrape_count, then the agent's and the guest's."""
        self.scrapes += 1
        count = Family("kata_agent_scrape_count", "Metrics scrapes of the agent.", "counter")
        count.add(self.scrapes)
        return render([count, *agent_families(self.proc), *guest_families(self.proc)])
