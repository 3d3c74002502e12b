"""Task/Stats metrics: the cgroups v1 Metrics proto and the agent-stats conversion.

The field table was checked against stats/v1/metrics.proto of
github.com/containerd/cgroups v1.0.4, the copy containerd v1.6.20 vendors.
"""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as FD

from protos.containerd.cgroups.v1 import metrics_pb2 as m
from protos.kata import agent_pb2 as agent
from shim.task_service.metrics import (
    MEMORY_STAT_KEYS,
    TYPE_URL,
    metrics_from_agent,
    pack_metrics,
)

REPEATED = True
SINGLE = False

# (message, field, number, type, repeated?, message type of the field or None)
FIELDS = [
    (m.Metrics, "hugetlb", 1, FD.TYPE_MESSAGE, REPEATED, "HugetlbStat"),
    (m.Metrics, "pids", 2, FD.TYPE_MESSAGE, SINGLE, "PidsStat"),
    (m.Metrics, "cpu", 3, FD.TYPE_MESSAGE, SINGLE, "CPUStat"),
    (m.Metrics, "memory", 4, FD.TYPE_MESSAGE, SINGLE, "MemoryStat"),
    (m.Metrics, "blkio", 5, FD.TYPE_MESSAGE, SINGLE, "BlkIOStat"),
    (m.Metrics, "rdma", 6, FD.TYPE_MESSAGE, SINGLE, "RdmaStat"),
    (m.Metrics, "network", 7, FD.TYPE_MESSAGE, REPEATED, "NetworkStat"),
    (m.Metrics, "cgroup_stats", 8, FD.TYPE_MESSAGE, SINGLE, "CgroupStats"),
    (m.Metrics, "memory_oom_control", 9, FD.TYPE_MESSAGE, SINGLE, "MemoryOomControl"),
    (m.HugetlbStat, "failcnt", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.HugetlbStat, "pagesize", 4, FD.TYPE_STRING, SINGLE, None),
    (m.PidsStat, "current", 1, FD.TYPE_UINT64, SINGLE, None),
    (m.PidsStat, "limit", 2, FD.TYPE_UINT64, SINGLE, None),
    (m.CPUStat, "usage", 1, FD.TYPE_MESSAGE, SINGLE, "CPUUsage"),
    (m.CPUStat, "throttling", 2, FD.TYPE_MESSAGE, SINGLE, "Throttle"),
    (m.CPUUsage, "total", 1, FD.TYPE_UINT64, SINGLE, None),
    (m.CPUUsage, "kernel", 2, FD.TYPE_UINT64, SINGLE, None),
    (m.CPUUsage, "user", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.CPUUsage, "per_cpu", 4, FD.TYPE_UINT64, REPEATED, None),
    (m.Throttle, "throttled_time", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "cache", 1, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "pg_pg_in", 7, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "hierarchical_swap_limit", 17, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "total_cache", 18, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "total_unevictable", 32, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryStat, "usage", 33, FD.TYPE_MESSAGE, SINGLE, "MemoryEntry"),
    (m.MemoryStat, "swap", 34, FD.TYPE_MESSAGE, SINGLE, "MemoryEntry"),
    (m.MemoryStat, "kernel", 35, FD.TYPE_MESSAGE, SINGLE, "MemoryEntry"),
    (m.MemoryStat, "kernel_tcp", 36, FD.TYPE_MESSAGE, SINGLE, "MemoryEntry"),
    (m.MemoryEntry, "limit", 1, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryEntry, "usage", 2, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryEntry, "max", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryEntry, "failcnt", 4, FD.TYPE_UINT64, SINGLE, None),
    (m.MemoryOomControl, "oom_kill", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.BlkIOStat, "io_service_bytes_recursive", 1, FD.TYPE_MESSAGE, REPEATED, "BlkIOEntry"),
    (m.BlkIOStat, "io_queued_recursive", 3, FD.TYPE_MESSAGE, REPEATED, "BlkIOEntry"),
    (m.BlkIOStat, "sectors_recursive", 8, FD.TYPE_MESSAGE, REPEATED, "BlkIOEntry"),
    (m.BlkIOEntry, "op", 1, FD.TYPE_STRING, SINGLE, None),
    (m.BlkIOEntry, "device", 2, FD.TYPE_STRING, SINGLE, None),
    (m.BlkIOEntry, "major", 3, FD.TYPE_UINT64, SINGLE, None),
    (m.BlkIOEntry, "value", 5, FD.TYPE_UINT64, SINGLE, None),
    (m.RdmaStat, "limit", 2, FD.TYPE_MESSAGE, REPEATED, "RdmaEntry"),
    (m.RdmaEntry, "hca_handles", 2, FD.TYPE_UINT32, SINGLE, None),
    (m.RdmaEntry, "hca_objects", 3, FD.TYPE_UINT32, SINGLE, None),
    (m.NetworkStat, "name", 1, FD.TYPE_STRING, SINGLE, None),
    (m.NetworkStat, "rx_dropped", 5, FD.TYPE_UINT64, SINGLE, None),
    (m.NetworkStat, "tx_dropped", 9, FD.TYPE_UINT64, SINGLE, None),
    (m.CgroupStats, "nr_io_wait", 5, FD.TYPE_UINT64, SINGLE, None),
]

# Number of fields per message upstream: catches an extra or a missing one.
FIELD_COUNTS = {
    "Metrics": 9,
    "HugetlbStat": 4,
    "PidsStat": 2,
    "CPUStat": 2,
    "CPUUsage": 4,
    "Throttle": 3,
    "MemoryStat": 36,
    "MemoryEntry": 4,
    "MemoryOomControl": 3,
    "BlkIOStat": 8,
    "BlkIOEntry": 5,
    "RdmaStat": 2,
    "RdmaEntry": 3,
    "NetworkStat": 9,
    "CgroupStats": 5,
}


@pytest.mark.parametrize(
    ("message", "name", "number", "kind", "repeated", "type_name"),
    FIELDS,
    ids=[f"{f[0].DESCRIPTOR.name}.{f[1]}" for f in FIELDS],
)
def test_field(message, name: str, number: int, kind: int, repeated: bool, type_name) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    assert (field.number, field.type, field.is_repeated) == (number, kind, repeated)
    if type_name is not None:
        assert field.message_type.full_name == f"io.containerd.cgroups.v1.{type_name}"


def test_messages_and_field_counts() -> None:
    messages = m.DESCRIPTOR.message_types_by_name
    found = {name: len(descriptor.fields) for name, descriptor in messages.items()}
    assert found == FIELD_COUNTS


def test_memory_stat_scalars_are_1_to_32_in_upstream_order() -> None:
    fields = m.MemoryStat.DESCRIPTOR.fields
    assert [f.number for f in fields] == list(range(1, 37))
    scalars = [f.name for f in fields if f.type == FD.TYPE_UINT64]
    assert scalars == list(MEMORY_STAT_KEYS)


def test_package_and_file_name() -> None:
    assert m.DESCRIPTOR.package == "io.containerd.cgroups.v1"
    assert m.DESCRIPTOR.name == "protos/containerd/cgroups/v1/metrics.proto"
    assert m.Metrics.DESCRIPTOR.full_name == TYPE_URL


# --- conversion -----------------------------------------------------------------


def _data(usage: int, max_usage: int, failcnt: int, limit: int) -> agent.MemoryData:
    return agent.MemoryData(usage=usage, max_usage=max_usage, failcnt=failcnt, limit=limit)


def filled_response(use_hierarchy: bool = True) -> agent.StatsContainerResponse:
    raw = {
        "cache": 11,
        "rss": 12,
        "mapped_file": 13,
        "total_cache": 21,
        "total_rss": 22,
        "total_mapped_file": 23,
        "pgfault": 31,
        "pgmajfault": 32,
        "pgpgin": 33,
        "total_pgpgout": 34,
        "total_inactive_file": 35,
        "hierarchical_memsw_limit": 36,
        "not_a_cgroup_v1_key": 99,
    }
    entry = agent.BlkioStatsEntry
    response = agent.StatsContainerResponse(
        cgroup_stats=agent.CgroupStats(
            cpu_stats=agent.CpuStats(
                cpu_usage=agent.CpuUsage(
                    total_usage=1000,
                    percpu_usage=[600, 400],
                    usage_in_kernelmode=300,
                    usage_in_usermode=700,
                ),
                throttling_data=agent.ThrottlingData(
                    periods=5, throttled_periods=2, throttled_time=77
                ),
            ),
            memory_stats=agent.MemoryStats(
                cache=4096,
                usage=_data(100, 200, 1, 1 << 30),
                swap_usage=_data(110, 210, 2, 1 << 31),
                kernel_usage=_data(120, 220, 3, 1 << 32),
                use_hierarchy=use_hierarchy,
                stats=raw,
            ),
            pids_stats=agent.PidsStats(current=3, limit=1024),
            blkio_stats=agent.BlkioStats(
                io_service_bytes_recursive=[
                    entry(major=254, minor=0, op="Read", value=8192),
                    entry(major=254, minor=0, op="Write", value=4096),
                ],
                io_serviced_recursive=[entry(major=254, minor=0, op="Total", value=3)],
                sectors_recursive=[entry(major=254, minor=1, op="", value=16)],
            ),
        ),
        network_stats=[
            agent.NetworkStats(
                name="eth0",
                rx_bytes=1,
                rx_packets=2,
                rx_errors=3,
                rx_dropped=4,
                tx_bytes=5,
                tx_packets=6,
                tx_errors=7,
                tx_dropped=8,
            )
        ],
    )
    response.cgroup_stats.hugetlb_stats["2MB"].CopyFrom(
        agent.HugetlbStats(usage=10, max_usage=20, failcnt=1)
    )
    response.cgroup_stats.hugetlb_stats["1GB"].CopyFrom(agent.HugetlbStats(usage=0))
    return response


def test_conversion_of_a_filled_response() -> None:
    got = metrics_from_agent(filled_response())
    bentry = m.BlkIOEntry
    expected = m.Metrics(
        hugetlb=[
            m.HugetlbStat(usage=0, max=0, failcnt=0, pagesize="1GB"),
            m.HugetlbStat(usage=10, max=20, failcnt=1, pagesize="2MB"),
        ],
        pids=m.PidsStat(current=3, limit=1024),
        cpu=m.CPUStat(
            usage=m.CPUUsage(total=1000, kernel=300, user=700, per_cpu=[600, 400]),
            throttling=m.Throttle(periods=5, throttled_periods=2, throttled_time=77),
        ),
        memory=m.MemoryStat(
            # use_hierarchy: Kata takes these three from the total_* keys
            cache=21,
            rss=22,
            mapped_file=23,
            total_cache=21,
            total_rss=22,
            total_mapped_file=23,
            pg_fault=31,
            pg_maj_fault=32,
            pg_pg_in=33,
            total_pg_pg_out=34,
            total_inactive_file=35,
            hierarchical_swap_limit=36,
            usage=m.MemoryEntry(limit=1 << 30, usage=100, max=200, failcnt=1),
            swap=m.MemoryEntry(limit=1 << 31, usage=110, max=210, failcnt=2),
            kernel=m.MemoryEntry(limit=1 << 32, usage=120, max=220, failcnt=3),
            kernel_tcp=m.MemoryEntry(),
        ),
        blkio=m.BlkIOStat(
            io_service_bytes_recursive=[
                bentry(op="Read", major=254, minor=0, value=8192),
                bentry(op="Write", major=254, minor=0, value=4096),
            ],
            io_serviced_recursive=[bentry(op="Total", major=254, minor=0, value=3)],
            sectors_recursive=[bentry(op="", major=254, minor=1, value=16)],
        ),
        network=[
            m.NetworkStat(
                name="eth0",
                rx_bytes=1,
                rx_packets=2,
                rx_errors=3,
                rx_dropped=4,
                tx_bytes=5,
                tx_packets=6,
                tx_errors=7,
                tx_dropped=8,
            )
        ],
    )
    assert json_format.MessageToDict(got) == json_format.MessageToDict(expected)
    assert got == expected
    assert not got.HasField("rdma")
    assert not got.HasField("cgroup_stats")
    assert not got.HasField("memory_oom_control")


def test_without_hierarchy_cache_rss_mapped_file_are_the_local_keys() -> None:
    memory = metrics_from_agent(filled_response(use_hierarchy=False)).memory
    assert (memory.cache, memory.rss, memory.mapped_file) == (11, 12, 13)
    assert (memory.total_cache, memory.total_rss) == (21, 22)


def test_cache_falls_back_to_memory_stats_cache_without_cache_keys() -> None:
    # cgroup v2 guest: memory.stat has "file", "anon", ... and no cache keys.
    response = agent.StatsContainerResponse(
        cgroup_stats=agent.CgroupStats(
            memory_stats=agent.MemoryStats(
                cache=4096, use_hierarchy=True, stats={"file": 4096, "anon": 10, "pgfault": 7}
            )
        )
    )
    memory = metrics_from_agent(response).memory
    assert (memory.cache, memory.total_cache, memory.pg_fault, memory.rss) == (4096, 4096, 7, 0)


def test_empty_response_still_has_what_ctr_dereferences() -> None:
    got = metrics_from_agent(agent.StatsContainerResponse())
    # ctr prints Memory.Usage.Usage and CPU.Usage.Total without nil checks.
    for parent, child in [("memory", "usage"), ("cpu", "usage"), ("cpu", "throttling")]:
        assert got.HasField(parent)
        assert getattr(got, parent).HasField(child)
    assert got.HasField("pids")
    assert got.HasField("blkio")
    assert list(got.hugetlb) == []
    assert list(got.network) == []
    # present on the wire, though all zero
    assert m.Metrics.FromString(got.SerializeToString()).memory.HasField("usage")


def test_pack_metrics() -> None:
    metrics = metrics_from_agent(filled_response())
    packed = pack_metrics(metrics)
    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    assert m.Metrics.FromString(packed.value) == metrics
