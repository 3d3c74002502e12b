"""StatsContainer's answer: the container's cgroup files, and /proc/net/dev.

`read_cgroup` reads the cgroup files the way runc 1.1's `events --stats` does
(same figures, same JSON shape: crun has no such command, and reading a few
files beats starting a Go program under emulation); `cgroup_stats` turns that
shape into Kata's CgroupStats.
"""

from __future__ import annotations

import os
from typing import Any

from protos.kata import agent_pb2

CGROUP_ROOT = "/sys/fs/cgroup"
HUGEPAGES = "/sys/kernel/mm/hugepages"

_BLKIO = {
    "ioServiceBytesRecursive": "io_service_bytes_recursive",
    "ioServicedRecursive": "io_serviced_recursive",
    "ioQueueRecursive": "io_queued_recursive",
    "ioServiceTimeRecursive": "io_service_time_recursive",
    "ioWaitTimeRecursive": "io_wait_time_recursive",
    "ioMergedRecursive": "io_merged_recursive",
    "ioTimeRecursive": "io_time_recursive",
    "sectorsRecursive": "sectors_recursive",
}
_UINT64_MAX = (1 << 64) - 1


def _u64(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return min(max(number, 0), _UINT64_MAX)


def _memory_data(entry: dict[str, Any]) -> agent_pb2.MemoryData:
    return agent_pb2.MemoryData(
        usage=_u64(entry.get("usage")),
        max_usage=_u64(entry.get("max")),
        failcnt=_u64(entry.get("failcnt")),
        limit=_u64(entry.get("limit")),
    )


def cgroup_stats(data: dict[str, Any]) -> agent_pb2.CgroupStats:
    """Kata's CgroupStats from the `data` of runc's stats event (or of read_cgroup)."""
    cpu = data.get("cpu", {})
    usage = cpu.get("usage", {})
    throttling = cpu.get("throttling", {})
    memory = data.get("memory", {})
    pids = data.get("pids", {})
    blkio = data.get("blkio", {})
    stats = agent_pb2.CgroupStats(
        cpu_stats=agent_pb2.CpuStats(
            cpu_usage=agent_pb2.CpuUsage(
                total_usage=_u64(usage.get("total")),
                percpu_usage=[_u64(v) for v in usage.get("percpu", ())],
                usage_in_kernelmode=_u64(usage.get("kernel")),
                usage_in_usermode=_u64(usage.get("user")),
            ),
            throttling_data=agent_pb2.ThrottlingData(
                periods=_u64(throttling.get("periods")),
                throttled_periods=_u64(throttling.get("throttled_periods")),
                throttled_time=_u64(throttling.get("throttled_time")),
            ),
        ),
        memory_stats=agent_pb2.MemoryStats(
            cache=_u64(memory.get("cache")),
            usage=_memory_data(memory.get("usage", {})),
            swap_usage=_memory_data(memory.get("swap", {})),
            kernel_usage=_memory_data(memory.get("kernel", {})),
            use_hierarchy=True,  # always, with cgroup v2 and with v1 since Linux 5.16
            stats={k: _u64(v) for k, v in memory.get("raw", {}).items()},
        ),
        pids_stats=agent_pb2.PidsStats(
            current=_u64(pids.get("current")), limit=_u64(pids.get("limit"))
        ),
    )
    for key, name in _BLKIO.items():
        getattr(stats.blkio_stats, name).extend(
            agent_pb2.BlkioStatsEntry(
                major=_u64(e.get("major")),
                minor=_u64(e.get("minor")),
                op=str(e.get("op", "")),
                value=_u64(e.get("value")),
            )
            for e in blkio.get(key) or ()
        )
    for size, entry in (data.get("hugetlb") or {}).items():
        stats.hugetlb_stats[size].CopyFrom(
            agent_pb2.HugetlbStats(
                usage=_u64(entry.get("usage")),
                max_usage=_u64(entry.get("max")),
                failcnt=_u64(entry.get("failcnt")),
            )
        )
    return stats


def network_stats(path: str = "/proc/net/dev") -> list[agent_pb2.NetworkStats]:
    """Counters of the VM's interfaces (every container shares the VM's network), lo left out."""
    found = []
    try:
        with open(path) as table:
            lines = table.readlines()[2:]
    except OSError:
        return found
    for line in lines:
        name, _, numbers = line.partition(":")
        name = name.strip()
        fields = numbers.split()
        if name == "lo" or len(fields) < 12:
            continue
        f = [_u64(x) for x in fields]
        found.append(
            agent_pb2.NetworkStats(
                name=name,
                rx_bytes=f[0],
                rx_packets=f[1],
                rx_errors=f[2],
                rx_dropped=f[3],
                tx_bytes=f[8],
                tx_packets=f[9],
                tx_errors=f[10],
                tx_dropped=f[11],
            )
        )
    return found


# -- the cgroup files ---------------------------------------------------------------------
def _text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _number(path: str) -> int | None:
    """A one-number file; "max" (no limit) is 2^64-1; None when missing or unreadable."""
    text = _text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return _UINT64_MAX
    try:
        return int(text)
    except ValueError:
        return None


def pairs(path: str) -> dict[str, int]:
    """A flat-keyed file ("key value" lines: memory.stat, cpu.stat, cpuacct.stat)."""
    found: dict[str, int] = {}
    for line in (_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            found[key] = int(value)
        except ValueError:
            continue
    return found


def _hierarchies(root: str) -> dict[str, str]:
    """cgroup v1: controller name -> its hierarchy folder (`cpu,cpuacct` serves both)."""
    found: dict[str, str] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return found
    for name in names:
        for controller in name.split(","):
            found.setdefault(controller, os.path.join(root, name))
    return found


def _page_sizes(folder: str) -> list[str]:
    """Huge page sizes as runc names them: hugepages-2048kB -> 2MB, 1048576kB -> 1GB."""
    sizes = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return sizes
    for name in names:
        if not (name.startswith("hugepages-") and name.endswith("kB")):
            continue
        try:
            size = float(int(name[len("hugepages-") : -2]) * 1024)
        except ValueError:
            continue
        unit = 0
        while size >= 1024 and unit < 5:
            size /= 1024
            unit += 1
        sizes.append(f"{size:g}{('B', 'KB', 'MB', 'GB', 'TB', 'PB')[unit]}")
    return sizes


def _v1_blkio_entries(path: str) -> list[dict[str, Any]] | None:
    """`8:0 Read 123` / `8:0 123` lines (the `Total` line skipped); None when missing or empty."""
    entries = []
    for line in (_text(path) or "").splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) < 3:
            continue
        try:
            entry: dict[str, Any] = {"major": int(fields[0]), "minor": int(fields[1])}
            if len(fields) == 4:
                entry["op"], entry["value"] = fields[2], int(fields[3])
            else:
                entry["value"] = int(fields[2])
        except ValueError:
            continue
        entries.append(entry)
    return entries or None


# runc's order: the first group whose first file has entries is used.
_V1_BLKIO_GROUPS: tuple[tuple[tuple[str, str], ...], ...] = (
    (
        ("blkio.bfq.sectors_recursive", "sectorsRecursive"),
        ("blkio.bfq.io_service_time_recursive", "ioServiceTimeRecursive"),
        ("blkio.bfq.io_wait_time_recursive", "ioWaitTimeRecursive"),
        ("blkio.bfq.io_merged_recursive", "ioMergedRecursive"),
        ("blkio.bfq.io_queued_recursive", "ioQueueRecursive"),
        ("blkio.bfq.time_recursive", "ioTimeRecursive"),
        ("blkio.bfq.io_serviced_recursive", "ioServicedRecursive"),
        ("blkio.bfq.io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ),
    (
        ("blkio.bfq.io_serviced_recursive", "ioServicedRecursive"),
        ("blkio.bfq.io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ),
    (
        ("blkio.sectors_recursive", "sectorsRecursive"),
        ("blkio.io_service_time_recursive", "ioServiceTimeRecursive"),
        ("blkio.io_wait_time_recursive", "ioWaitTimeRecursive"),
        ("blkio.io_merged_recursive", "ioMergedRecursive"),
        ("blkio.io_queued_recursive", "ioQueueRecursive"),
        ("blkio.time_recursive", "ioTimeRecursive"),
        ("blkio.io_serviced_recursive", "ioServicedRecursive"),
        ("blkio.io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ),
    (
        ("blkio.throttle.io_serviced_recursive", "ioServicedRecursive"),
        ("blkio.throttle.io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ),
    (
        ("blkio.throttle.io_serviced", "ioServicedRecursive"),
        ("blkio.throttle.io_service_bytes", "ioServiceBytesRecursive"),
    ),
)


def _v1_memory_entry(folder: str, prefix: str) -> dict[str, int]:
    """memory.{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes} of one prefix."""
    entry = {}
    for key, name in (
        ("usage", "usage_in_bytes"),
        ("max", "max_usage_in_bytes"),
        ("failcnt", "failcnt"),
        ("limit", "limit_in_bytes"),
    ):
        value = _number(os.path.join(folder, f"{prefix}.{name}"))
        if value is not None:
            entry[key] = value
    return entry


def _read_v1(root: str, cgroup: str, page_sizes: list[str]) -> dict[str, Any]:
    where = {name: os.path.join(folder, cgroup) for name, folder in _hierarchies(root).items()}
    data: dict[str, Any] = {}

    usage: dict[str, Any] = {}
    if "cpuacct" in where:
        folder = where["cpuacct"]
        total = _number(os.path.join(folder, "cpuacct.usage"))
        if total is not None:
            usage["total"] = total
        percpu = (_text(os.path.join(folder, "cpuacct.usage_percpu")) or "").split()
        usage["percpu"] = [int(v) for v in percpu if v.isdigit()]
        ticks = pairs(os.path.join(folder, "cpuacct.stat"))
        hertz = os.sysconf("SC_CLK_TCK") or 100
        usage["kernel"] = ticks.get("system", 0) * 1_000_000_000 // hertz
        usage["user"] = ticks.get("user", 0) * 1_000_000_000 // hertz
    throttling: dict[str, int] = {}
    if "cpu" in where:
        stat = pairs(os.path.join(where["cpu"], "cpu.stat"))
        throttling = {
            "periods": stat.get("nr_periods", 0),
            "throttled_periods": stat.get("nr_throttled", 0),
            "throttled_time": stat.get("throttled_time", 0),
        }
    data["cpu"] = {"usage": usage, "throttling": throttling}

    if "memory" in where:
        folder = where["memory"]
        raw = pairs(os.path.join(folder, "memory.stat"))
        data["memory"] = {
            "cache": raw.get("cache", 0),
            "usage": _v1_memory_entry(folder, "memory"),
            "swap": _v1_memory_entry(folder, "memory.memsw"),
            "kernel": _v1_memory_entry(folder, "memory.kmem"),
            "raw": raw,
        }

    if "pids" in where:
        limit = _number(os.path.join(where["pids"], "pids.max"))
        data["pids"] = {
            "current": _number(os.path.join(where["pids"], "pids.current")) or 0,
            "limit": 0 if limit in (None, _UINT64_MAX) else limit,
        }

    blkio: dict[str, Any] = {}
    if "blkio" in where:
        for group in _V1_BLKIO_GROUPS:
            first = _v1_blkio_entries(os.path.join(where["blkio"], group[0][0]))
            if first is None:
                continue
            blkio[group[0][1]] = first
            for name, key in group[1:]:
                blkio[key] = _v1_blkio_entries(os.path.join(where["blkio"], name)) or []
            break
    data["blkio"] = blkio

    hugetlb: dict[str, Any] = {}
    if "hugetlb" in where:
        folder = where["hugetlb"]
        for size in page_sizes:
            stem = os.path.join(folder, f"hugetlb.{size}.")
            usage_bytes = _number(stem + "usage_in_bytes")
            if usage_bytes is None:
                continue
            hugetlb[size] = {
                "usage": usage_bytes,
                "max": _number(stem + "max_usage_in_bytes") or 0,
                "failcnt": _number(stem + "failcnt") or 0,
            }
    data["hugetlb"] = hugetlb
    return data


def _read_v2(folder: str, page_sizes: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    stat = pairs(os.path.join(folder, "cpu.stat"))
    data["cpu"] = {
        "usage": {
            "total": stat.get("usage_usec", 0) * 1000,
            "kernel": stat.get("system_usec", 0) * 1000,
            "user": stat.get("user_usec", 0) * 1000,
        },
        "throttling": {
            "periods": stat.get("nr_periods", 0),
            "throttled_periods": stat.get("nr_throttled", 0),
            "throttled_time": stat.get("throttled_usec", 0) * 1000,
        },
    }

    raw = pairs(os.path.join(folder, "memory.stat"))
    usage = {
        "usage": _number(os.path.join(folder, "memory.current")) or 0,
        "limit": _number(os.path.join(folder, "memory.max")) or 0,
    }
    # Like v1, whose swap figures are memory + swap.
    swap: dict[str, int] = {}
    swap_usage = _number(os.path.join(folder, "memory.swap.current"))
    if swap_usage is not None:
        swap_limit = _number(os.path.join(folder, "memory.swap.max")) or 0
        swap = {
            "usage": swap_usage + usage["usage"],
            "limit": swap_limit
            if swap_limit == _UINT64_MAX
            else min(swap_limit + usage["limit"], _UINT64_MAX),
        }
    data["memory"] = {"cache": raw.get("file", 0), "usage": usage, "swap": swap, "raw": raw}

    limit = _number(os.path.join(folder, "pids.max"))
    data["pids"] = {
        "current": _number(os.path.join(folder, "pids.current")) or 0,
        "limit": 0 if limit in (None, _UINT64_MAX) else limit,
    }

    served: list[dict[str, Any]] = []
    count: list[dict[str, Any]] = []
    tables = {"rbytes": (served, "Read"), "wbytes": (served, "Write"),
              "rios": (count, "Read"), "wios": (count, "Write")}  # fmt: skip
    for line in (_text(os.path.join(folder, "io.stat")) or "").splitlines():
        device, *items = line.split()
        major, _, minor = device.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        for item in items:
            key, _, value = item.partition("=")
            if key in tables and value.isdigit():
                table, op = tables[key]
                table.append(
                    {"major": int(major), "minor": int(minor), "op": op, "value": int(value)}
                )
    data["blkio"] = {"ioServiceBytesRecursive": served, "ioServicedRecursive": count}

    hugetlb: dict[str, Any] = {}
    for size in page_sizes:
        stem = os.path.join(folder, f"hugetlb.{size}.")
        current = _number(stem + "current")
        if current is None:
            continue
        events = pairs(stem + "events")
        hugetlb[size] = {"usage": current, "failcnt": events.get("max", 0)}
    data["hugetlb"] = hugetlb
    return data


def unified(root: str = CGROUP_ROOT) -> bool:
    """Whether the cgroup hierarchy is v2 only (cgroup.controllers at the root)."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def read_cgroup(
    cgroups_path: str, root: str = CGROUP_ROOT, hugepages: str = HUGEPAGES
) -> dict[str, Any]:
    """The container's figures from its cgroup files, shaped like runc's stats event `data`.

    cgroup v2 alone (cgroup.controllers at the root) or v1 hierarchies, one per
    controller (a hybrid's cgroup2 at `unified` holds no controller: skipped).
    Missing files leave their figures out, as runc does.
    """
    cgroup = cgroups_path.strip("/")
    page_sizes = _page_sizes(hugepages)
    if unified(root):
        return _read_v2(os.path.join(root, cgroup), page_sizes)
    return _read_v1(root, cgroup, page_sizes)
