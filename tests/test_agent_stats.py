"""Container stats from the cgroup files (fake v1 and v2 trees).

The same reader against a real container and `runc events --stats` is in
test_agent_containers.py (test_stats_match_runc_events).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import stats

UINT64_MAX = (1 << 64) - 1


def write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


@pytest.fixture
def hugepages(tmp_path: Path) -> str:
    folder = tmp_path / "hugepages"
    for name in ("hugepages-2048kB", "hugepages-1048576kB"):
        (folder / name).mkdir(parents=True)
    return str(folder)


def test_page_size_names_are_runcs(tmp_path):
    for name in ("hugepages-64kB", "hugepages-2048kB", "hugepages-1048576kB", "not-a-size"):
        (tmp_path / name).mkdir()
    assert stats._page_sizes(str(tmp_path)) == ["1GB", "2MB", "64KB"]
    assert stats._page_sizes(str(tmp_path / "missing")) == []


def v1_tree(root: Path, cgroup: str, *, cpu_dir: str = "cpuacct") -> None:
    """A v1 layout like the guest's: one hierarchy per controller, an empty `unified`."""
    (root / "unified").mkdir(parents=True)
    write(
        root / cpu_dir / cgroup,
        {
            "cpuacct.usage": "123456789\n",
            "cpuacct.usage_percpu": "100000000 23456789 \n",
            "cpuacct.stat": "user 7\nsystem 3\n",
        },
    )
    cpu = "cpu" if cpu_dir == "cpuacct" else cpu_dir
    write(root / cpu / cgroup, {"cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n"})
    write(
        root / "memory" / cgroup,
        {
            "memory.usage_in_bytes": "4096000\n",
            "memory.max_usage_in_bytes": "8192000\n",
            "memory.failcnt": "1\n",
            "memory.limit_in_bytes": "67108864\n",
            "memory.kmem.usage_in_bytes": "1000\n",
            "memory.kmem.max_usage_in_bytes": "2000\n",
            "memory.kmem.failcnt": "0\n",
            "memory.kmem.limit_in_bytes": "9223372036854771712\n",
            # no memory.memsw.*: a kernel without swap accounting
            "memory.stat": "cache 4096\nrss 8192\nhierarchical_memory_limit 67108864\n",
        },
    )
    write(root / "pids" / cgroup, {"pids.current": "3\n", "pids.max": "max\n"})
    write(
        root / "blkio" / cgroup,
        {
            # CFQ files present but empty (no CFQ scheduler): runc falls back to throttle
            "blkio.io_serviced_recursive": "Total 0\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 1024\n",
        },
    )
    write(
        root / "hugetlb" / cgroup,
        {
            "hugetlb.2MB.usage_in_bytes": "2097152\n",
            "hugetlb.2MB.max_usage_in_bytes": "4194304\n",
            "hugetlb.2MB.failcnt": "1\n",
        },
    )


def test_v1_files_read_like_runc(tmp_path, hugepages):
    v1_tree(tmp_path, "pykata/c1")
    data = stats.read_cgroup("/pykata/c1", root=str(tmp_path), hugepages=hugepages)
    hertz = os.sysconf("SC_CLK_TCK")
    assert data["cpu"] == {
        "usage": {
            "total": 123456789,
            "percpu": [100000000, 23456789],
            "kernel": 3 * 1_000_000_000 // hertz,
            "user": 7 * 1_000_000_000 // hertz,
        },
        "throttling": {"periods": 10, "throttled_periods": 2, "throttled_time": 5000},
    }
    memory = data["memory"]
    assert memory["usage"] == {"usage": 4096000, "max": 8192000, "failcnt": 1, "limit": 67108864}
    assert memory["swap"] == {}
    assert memory["kernel"]["limit"] == 9223372036854771712
    assert memory["cache"] == 4096
    assert memory["raw"]["hierarchical_memory_limit"] == 67108864
    assert data["pids"] == {"current": 3, "limit": 0}  # "max": no limit, as runc says it
    assert data["blkio"] == {
        "ioServicedRecursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 5},
            {"major": 8, "minor": 0, "op": "Write", "value": 6},
        ],
        "ioServiceBytesRecursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 512},
            {"major": 8, "minor": 0, "op": "Write", "value": 1024},
        ],
    }
    assert data["hugetlb"] == {"2MB": {"usage": 2097152, "max": 4194304, "failcnt": 1}}

    answer = stats.cgroup_stats(data)  # Kata's message, the fields filled before
    assert answer.cpu_stats.cpu_usage.total_usage == 123456789
    assert list(answer.cpu_stats.cpu_usage.percpu_usage) == [100000000, 23456789]
    assert answer.cpu_stats.throttling_data.throttled_periods == 2
    assert answer.memory_stats.usage.limit == 67108864
    assert answer.memory_stats.usage.max_usage == 8192000
    assert answer.memory_stats.kernel_usage.usage == 1000
    assert answer.memory_stats.stats["rss"] == 8192
    assert answer.pids_stats.current == 3
    assert [e.value for e in answer.blkio_stats.io_service_bytes_recursive] == [512, 1024]
    assert answer.hugetlb_stats["2MB"].max_usage == 4194304


def test_v1_combined_cpu_hierarchy_and_missing_cgroup(tmp_path, hugepages):
    v1_tree(tmp_path, "pykata/c1", cpu_dir="cpu,cpuacct")
    data = stats.read_cgroup("pykata/c1", root=str(tmp_path), hugepages=hugepages)
    assert data["cpu"]["usage"]["total"] == 123456789
    assert data["cpu"]["throttling"]["periods"] == 10
    gone = stats.read_cgroup("pykata/gone", root=str(tmp_path), hugepages=hugepages)
    answer = stats.cgroup_stats(gone)  # nothing to read: zeros, no error
    assert answer.memory_stats.usage.usage == 0 and answer.pids_stats.current == 0


def test_v2_files_read_like_runc(tmp_path, hugepages):
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids hugetlb\n")
    write(
        tmp_path / "pykata" / "c2",
        {
            "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
            "nr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
            "memory.current": "1048576\n",
            "memory.max": "max\n",
            "memory.swap.current": "4096\n",
            "memory.swap.max": "max\n",
            "memory.stat": "anon 8192\nfile 12288\n",
            "pids.current": "2\n",
            "pids.max": "50\n",
            "io.stat": "253:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
            "hugetlb.2MB.current": "0\n",
            "hugetlb.2MB.events": "max 3\n",
        },
    )
    data = stats.read_cgroup("/pykata/c2", root=str(tmp_path), hugepages=hugepages)
    assert data["cpu"] == {
        "usage": {"total": 1_500_000, "kernel": 500_000, "user": 1_000_000},
        "throttling": {"periods": 4, "throttled_periods": 1, "throttled_time": 20_000},
    }
    assert data["memory"]["usage"] == {"usage": 1048576, "limit": UINT64_MAX}
    assert data["memory"]["swap"] == {"usage": 1048576 + 4096, "limit": UINT64_MAX}
    assert data["memory"]["cache"] == 12288  # v2's "file"
    assert data["pids"] == {"current": 2, "limit": 50}
    assert data["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 253, "minor": 0, "op": "Read", "value": 4096},
        {"major": 253, "minor": 0, "op": "Write", "value": 8192},
    ]
    assert [e["value"] for e in data["blkio"]["ioServicedRecursive"]] == [1, 2]
    assert data["hugetlb"] == {"2MB": {"usage": 0, "failcnt": 3}}
    answer = stats.cgroup_stats(data)
    assert answer.memory_stats.usage.limit == UINT64_MAX
    assert answer.memory_stats.swap_usage.usage == 1048576 + 4096
