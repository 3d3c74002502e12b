"""Per-process families from /proc (Kata's names), and the pod overhead figures."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pykata_common.exposition import render
from shim.monitor import procfs
from shim.monitor.overhead import PodOverhead
from shim.monitor.procfs import (
    NETDEV_ITEMS,
    STATUS_ITEMS,
    count_fds,
    families_for,
    process_families,
    pss_bytes,
    read_io,
    read_netdev,
    read_stat,
    read_status,
)

FAMILIES = ("proc_status", "proc_stat", "io_stat", "fds", "threads")


def by_name(families):
    return {f.name: f for f in families}


def items(family, label="item"):
    return {dict(s.labels)[label]: s.value for s in family.samples}


# -- a fake /proc, for exact values -------------------------------------------

STATUS = """Name:\tqemu-system-x86
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  200 kB
VmSize:\t  150 kB
VmLck:\t       0 kB
VmHWM:\t  100 kB
VmRSS:\t   80 kB
RssAnon:\t   50 kB
RssFile:\t   30 kB
RssShmem:\t    0 kB
VmData:\t   60 kB
VmStk:\t  132 kB
VmExe:\t    4 kB
VmLib:\t    8 kB
VmPTE:\t   12 kB
VmSwap:\t    0 kB
HugetlbPages:\t   0 kB
Threads:\t7
voluntary_ctxt_switches:\t11
nonvoluntary_ctxt_switches:\t3
"""
# comm with spaces and parentheses: fields are counted after the last ')'
STAT = (
    "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
    "250 75 5 2 20 0 7 0 123456 1000000 20 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0"
)
IO = """rchar: 1000
wchar: 2000
syscr: 30
syscw: 40
read_bytes: 4096
write_bytes: 8192
cancelled_write_bytes: 512
"""
NETDEV = (
    "Inter-|   Receive                            |  Transmit\n"
    " face |bytes packets errs drop fifo frame compressed multicast|"
    "bytes packets errs drop fifo colls carrier compressed\n"
    "    lo:     100       2    0    0    0     0          0         0"
    "      100       2    0    0    0     0       0          0\n"
    "  eth0: 5000 50 1 2 3 4 5 6 7000 70 7 8 9 10 11 12\n"
)


@pytest.fixture
def fake_proc(tmp_path):
    pid_dir = tmp_path / "4242"
    (pid_dir / "fd").mkdir(parents=True)
    (pid_dir / "net").mkdir()
    (pid_dir / "status").write_text(STATUS)
    (pid_dir / "stat").write_text(STAT)
    (pid_dir / "io").write_text(IO)
    (pid_dir / "net" / "dev").write_text(NETDEV)
    (pid_dir / "smaps_rollup").write_text("Rss:  90 kB\nPss:  70 kB\nPss_Anon: 40 kB\n")
    for fd in ("0", "1", "2"):
        (pid_dir / "fd" / fd).touch()
    return str(tmp_path)


def test_readers_parse_the_kernel_formats(fake_proc):
    stat = read_stat(4242, fake_proc)
    assert stat is not None
    assert (stat.state, stat.utime, stat.stime, stat.cutime, stat.cstime) == ("S", 250, 75, 5, 2)
    assert (stat.num_threads, stat.start_time) == (7, 123456)
    status = read_status(4242, fake_proc)
    assert status is not None
    assert status["VmRSS"] == 80 * 1024 and status["VmPeak"] == 200 * 1024
    assert status["voluntary_ctxt_switches"] == 11  # a count, not kB
    assert "VmPin" not in status and "Threads" not in status
    assert read_io(4242, fake_proc) == {
        "rchar": 1000,
        "wchar": 2000,
        "syscr": 30,
        "syscw": 40,
        "read_bytes": 4096,
        "write_bytes": 8192,
        "cancelled_write_bytes": 512,
    }
    assert count_fds(4242, fake_proc) == 3
    netdev = read_netdev(4242, fake_proc)
    assert netdev is not None
    assert netdev["eth0"] == (5000, 50, 1, 2, 3, 4, 5, 6, 7000, 70, 7, 8, 9, 10, 11, 12)
    assert set(netdev) == {"lo", "eth0"}
    assert pss_bytes(4242, fake_proc) == 70 * 1024


def test_hypervisor_families_use_katas_names_items_and_units(fake_proc):
    families = by_name(process_families("kata_hypervisor", 4242, proc=fake_proc))
    assert list(families) == [f"kata_hypervisor_{n}" for n in (*FAMILIES, "netdev")]
    status = items(families["kata_hypervisor_proc_status"])
    assert list(status) == [item.lower() for item in STATUS_ITEMS]
    assert status["vmrss"] == 80 * 1024 and status["vmpin"] == 0  # absent on this kernel
    assert items(families["kata_hypervisor_proc_stat"]) == {
        "utime": 250,
        "stime": 75,
        "cutime": 5,
        "cstime": 2,
    }
    assert list(items(families["kata_hypervisor_io_stat"])) == [
        "rchar",
        "wchar",
        "syscr",
        "syscw",
        "readbytes",
        "writebytes",
        "cancelledwritebytes",
    ]
    assert families["kata_hypervisor_fds"].samples[0].value == 3
    assert families["kata_hypervisor_threads"].samples[0].value == 7
    netdev = families["kata_hypervisor_netdev"]
    eth0 = {
        dict(s.labels)["item"]: s.value for s in netdev.samples if ("interface", "eth0") in s.labels
    }
    assert list(eth0) == list(NETDEV_ITEMS)
    assert (eth0["recv_bytes"], eth0["sent_bytes"], eth0["sent_compressed"]) == (5000, 7000, 12)
    assert all(f.kind == "gauge" for f in families.values())


def test_netdev_is_for_the_hypervisor_unless_asked(fake_proc):
    shim = by_name(process_families("kata_shim", 4242, proc=fake_proc))
    assert list(shim) == [f"kata_shim_{n}" for n in FAMILIES]
    vfs = by_name(process_families("kata_virtiofsd", 4242, netdev=True, proc=fake_proc))
    assert "kata_virtiofsd_netdev" in vfs
    qemu = by_name(process_families("kata_hypervisor", 4242, netdev=False, proc=fake_proc))
    assert "kata_hypervisor_netdev" not in qemu


def test_a_recycled_pid_or_a_gone_process_gives_nothing(fake_proc):
    assert process_families("kata_hypervisor", 4242, started=999, proc=fake_proc) == []
    assert process_families("kata_hypervisor", 4242, started=123456, proc=fake_proc)
    assert process_families("kata_hypervisor", 4243, proc=fake_proc) == []
    assert read_stat(4243, fake_proc) is None and count_fds(4243, fake_proc) is None


def test_unreadable_io_drops_only_that_family(fake_proc, monkeypatch):
    real = procfs._read

    def no_io(path):
        if path.endswith("/io"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(procfs, "_read", no_io)
    names = by_name(process_families("kata_shim", 4242, proc=fake_proc))
    assert "kata_shim_io_stat" not in names and "kata_shim_proc_status" in names


def test_families_for_skips_missing_processes(fake_proc):
    families = families_for(
        [("kata_shim", 4242, None), ("kata_virtiofsd", None, None), ("kata_hypervisor", 1, None)],
        proc=fake_proc,
    )
    assert {f.name for f in families} == {f"kata_shim_{n}" for n in FAMILIES}


# -- the real /proc -----------------------------------------------------------


def test_own_process():
    pid = os.getpid()
    families = by_name(process_families("kata_shim", pid))
    assert list(families) == [f"kata_shim_{n}" for n in FAMILIES]
    assert items(families["kata_shim_proc_status"])["vmrss"] > 1 << 20
    assert families["kata_shim_threads"].samples[0].value >= 1
    fds = families["kata_shim_fds"].samples[0].value
    assert abs(fds - len(os.listdir("/proc/self/fd"))) <= 2
    assert items(families["kata_shim_io_stat"])["rchar"] > 0
    stat = read_stat(pid)
    assert stat is not None and stat.state in "RS"
    assert (pss_bytes(pid) or 1) > 0


def test_child_process_then_killed():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = read_stat(child.pid)
        assert stat is not None
        families = by_name(process_families("kata_hypervisor", child.pid, started=stat.start_time))
        assert {f"kata_hypervisor_{n}" for n in (*FAMILIES, "netdev")} == set(families)
        assert families["kata_hypervisor_threads"].samples[0].value >= 1
        interfaces = {
            dict(s.labels)["interface"] for s in families["kata_hypervisor_netdev"].samples
        }
        assert "lo" in interfaces
        assert process_families("kata_hypervisor", child.pid, started=stat.start_time + 1) == []
    finally:
        child.kill()
        child.wait()
    assert process_families("kata_hypervisor", child.pid) == []


def test_build_time_for_one_sandbox(capsys):
    """Prints what building a sandbox's host families costs (no timing assertion)."""
    pid = os.getpid()
    processes = [("kata_shim", pid, None), ("kata_hypervisor", pid, None)]
    processes.append(("kata_virtiofsd", pid, None))
    overhead = PodOverhead()
    overhead.sample([pid])
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        families = families_for(processes)
        overhead.sample([pid, pid, pid])
        text = render([*families, *overhead.families()])
    each = (time.perf_counter() - started) / rounds * 1000
    with capsys.disabled():
        print(f"\n[monitor] 3 processes + overhead, built and rendered: {each:.2f} ms")
    assert "kata_hypervisor_netdev" in text


# -- pod overhead --------------------------------------------------------------


def _write_proc(root, pid, utime, stime, rss_kb, start=100):
    pid_dir = root / str(pid)
    pid_dir.mkdir(exist_ok=True)
    fields = ["S"] + ["0"] * 10 + [str(utime), str(stime), "0", "0"] + ["0"] * 2
    fields += ["1", "0", str(start)] + ["0"] * 20
    (pid_dir / "stat").write_text(f"{pid} (p) " + " ".join(fields))
    (pid_dir / "status").write_text(f"Name:\tp\nVmRSS:\t{rss_kb} kB\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_overhead_memory_and_cpu_between_two_readings(tmp_path):
    ticks = procfs.CLOCK_TICKS
    clock = Clock()
    _write_proc(tmp_path, 10, 0, 0, 100_000)  # QEMU
    _write_proc(tmp_path, 11, 0, 0, 20_000)  # shim
    tracker = PodOverhead(clock=clock, proc=str(tmp_path))
    first = tracker.sample([10, 11], guest_cpu_ns=0, guest_memory_bytes=50_000 * 1024)
    assert first.cpu_percent == 0.0  # nothing to compare with yet
    assert first.memory_bytes == (120_000 - 50_000) * 1024

    clock.now += 2.0
    _write_proc(tmp_path, 10, ticks, ticks // 2, 110_000)  # 1.5 s of CPU
    _write_proc(tmp_path, 11, ticks // 2, 0, 20_000)  # 0.5 s
    second = tracker.sample([10, 11], guest_cpu_ns=1_000_000_000, guest_memory_bytes=60_000 * 1024)
    # host 2 s of CPU in 2 s, guest 1 s of it: 50 % of one CPU is overhead
    assert second.cpu_percent == pytest.approx(50.0)
    assert second.memory_bytes == (130_000 - 60_000) * 1024
    families = by_name(tracker.families())
    assert families["kata_shim_pod_overhead_cpu"].samples[0].value == pytest.approx(50.0)
    assert families["kata_shim_pod_overhead_memory_in_bytes"].samples[0].value == 70_000 * 1024


def test_overhead_ignores_new_and_recycled_processes_and_floors_at_zero(tmp_path):
    ticks = procfs.CLOCK_TICKS
    clock = Clock()
    _write_proc(tmp_path, 10, 0, 0, 1000)
    tracker = PodOverhead(clock=clock, proc=str(tmp_path))
    tracker.sample([10, 12])  # 12 does not exist (yet)
    clock.now += 1.0
    _write_proc(tmp_path, 10, 10 * ticks, 0, 1000, start=555)  # another process on pid 10
    _write_proc(tmp_path, 12, 10 * ticks, 0, 1000)  # a new one
    reading = tracker.sample([10, 12], guest_memory_bytes=10**9)
    assert reading.cpu_percent == 0.0
    assert reading.memory_bytes == 0.0
    clock.now += 1.0
    _write_proc(tmp_path, 12, 10 * ticks + ticks // 4, 0, 1000)
    assert tracker.sample([10, 12]).cpu_percent == pytest.approx(25.0)
