"""StatsContainer's answer from `runc events --stats` JSON and /proc/net/dev."""

from __future__ import annotations

from typing import Any

from protos.kata import agent_pb2

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
    """Kata's CgroupStats from the `data` of runc's stats event."""
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
