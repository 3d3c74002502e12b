"""Task/Stats: the agent's StatsContainerResponse as containerd's cgroup v1 Metrics.

containerd 1.6 (and `ctr task metrics`) unpack StatsResponse.stats with typeurl
and expect `io.containerd.cgroups.v1.Metrics`. The mapping follows Kata's Go
shim (containerd-shim-v2/metrics.go, statsToMetricsV1), with two additions:

* Every memory.stat counter that cgroups' own v1 parser knows is copied from the
  agent's `stats` map, not only the handful Kata picks. In particular
  `total_cache`, which ctr prints as "memory.stat.cache" and Kata leaves at 0.
* When the map has no cache key at all (a cgroup v2 guest reports `file`, not
  `cache`), `cache` and `total_cache` fall back to MemoryStats.cache, which
  the agent fills from runc's own idea of the page cache.

As in Kata, the cpu, memory, pids and blkio parts are always present (zero when
the agent sent nothing): ctr dereferences Memory.Usage and CPU.Usage unchecked.
"""

from __future__ import annotations

from google.protobuf.any_pb2 import Any

from protos.containerd.cgroups.v1 import metrics_pb2
from protos.kata import agent_pb2

TYPE_URL = "io.containerd.cgroups.v1.Metrics"

# MemoryStat field <- memory.stat key, as github.com/containerd/cgroups (v1.0.4,
# memory.go parseStats) reads the file; the names differ for pg* and memsw.
MEMORY_STAT_KEYS: dict[str, str] = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pg_pg_in": "pgpgin",
    "pg_pg_out": "pgpgout",
    "pg_fault": "pgfault",
    "pg_maj_fault": "pgmajfault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_swap_limit": "hierarchical_memsw_limit",
    "total_cache": "total_cache",
    "total_rss": "total_rss",
    "total_rss_huge": "total_rss_huge",
    "total_mapped_file": "total_mapped_file",
    "total_dirty": "total_dirty",
    "total_writeback": "total_writeback",
    "total_pg_pg_in": "total_pgpgin",
    "total_pg_pg_out": "total_pgpgout",
    "total_pg_fault": "total_pgfault",
    "total_pg_maj_fault": "total_pgmajfault",
    "total_inactive_anon": "total_inactive_anon",
    "total_active_anon": "total_active_anon",
    "total_inactive_file": "total_inactive_file",
    "total_active_file": "total_active_file",
    "total_unevictable": "total_unevictable",
}

# Kata: with use_hierarchy these three come from the total_* keys instead.
HIERARCHY_OVERRIDES = ("cache", "rss", "mapped_file")

BLKIO_LISTS = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)

NETWORK_COUNTERS = (
    "rx_bytes",
    "rx_packets",
    "rx_errors",
    "rx_dropped",
    "tx_bytes",
    "tx_packets",
    "tx_errors",
    "tx_dropped",
)


def _memory_entry(data: agent_pb2.MemoryData, entry: metrics_pb2.MemoryEntry) -> None:
    entry.SetInParent()
    entry.limit = data.limit
    entry.usage = data.usage
    entry.max = data.max_usage
    entry.failcnt = data.failcnt


def _cpu(cpu: agent_pb2.CpuStats, out: metrics_pb2.CPUStat) -> None:
    usage, throttling = cpu.cpu_usage, cpu.throttling_data
    out.usage.SetInParent()
    out.usage.total = usage.total_usage
    out.usage.kernel = usage.usage_in_kernelmode
    out.usage.user = usage.usage_in_usermode
    out.usage.per_cpu.extend(usage.percpu_usage)
    out.throttling.SetInParent()
    out.throttling.periods = throttling.periods
    out.throttling.throttled_periods = throttling.throttled_periods
    out.throttling.throttled_time = throttling.throttled_time


def _memory(memory: agent_pb2.MemoryStats, out: metrics_pb2.MemoryStat) -> None:
    _memory_entry(memory.usage, out.usage)
    _memory_entry(memory.swap_usage, out.swap)
    _memory_entry(memory.kernel_usage, out.kernel)
    out.kernel_tcp.SetInParent()  # the agent has no kmem.tcp figures; Kata sends zeros too
    raw = memory.stats
    for field, key in MEMORY_STAT_KEYS.items():
        setattr(out, field, raw.get(key, 0))
    if memory.use_hierarchy:
        for field in HIERARCHY_OVERRIDES:
            setattr(out, field, raw.get("total_" + field, 0))
    if "cache" not in raw and "total_cache" not in raw:
        out.cache = memory.cache
        out.total_cache = memory.cache


def _blkio(blkio: agent_pb2.BlkioStats, out: metrics_pb2.BlkIOStat) -> None:
    out.SetInParent()
    for name in BLKIO_LISTS:
        getattr(out, name).extend(
            metrics_pb2.BlkIOEntry(op=e.op, major=e.major, minor=e.minor, value=e.value)
            for e in getattr(blkio, name)
        )


def metrics_from_agent(stats: agent_pb2.StatsContainerResponse) -> metrics_pb2.Metrics:
    """The cgroup v1 Metrics that Task/Stats reports for one container."""
    metrics = metrics_pb2.Metrics()
    cgroup = stats.cgroup_stats
    # Hugepage sizes come from a map: sorted, so the answer is deterministic.
    for size in sorted(cgroup.hugetlb_stats):
        entry = cgroup.hugetlb_stats[size]
        metrics.hugetlb.add(
            usage=entry.usage, max=entry.max_usage, failcnt=entry.failcnt, pagesize=size
        )
    metrics.pids.SetInParent()
    metrics.pids.current = cgroup.pids_stats.current
    metrics.pids.limit = cgroup.pids_stats.limit
    _cpu(cgroup.cpu_stats, metrics.cpu)
    _memory(cgroup.memory_stats, metrics.memory)
    _blkio(cgroup.blkio_stats, metrics.blkio)
    for net in stats.network_stats:
        metrics.network.add(name=net.name, **{c: getattr(net, c) for c in NETWORK_COUNTERS})
    return metrics


def pack_metrics(metrics: metrics_pb2.Metrics) -> Any:
    """An Any as containerd's typeurl writes it: the bare full name, no URL prefix."""
    return Any(type_url=TYPE_URL, value=metrics.SerializeToString())
