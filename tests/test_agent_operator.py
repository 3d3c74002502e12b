"""The agent's operator methods in-process: GetMetrics, Get/SetIPTables, GetVolumeStats,
ResizeVolume, ReseedRandomDev, served by a real ttrpc server on a Unix socket.

Nothing here touches the host's firewall, random pool or filesystems: iptables
is a fake script on PATH, the random devices are files in tmp_path, and the
only resize asked for is of /proc (refused before any tool could run).
"""

from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import ttrpc
from agent import entropy, metrics, volumes
from agent.children import Reaper
from agent.config import Config
from agent.service import AgentService
from protos.kata import agent_pb2
from shim.monitor.parse import parse
from ttrpc import Code, TTRPCError

AGENT = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
ROOT = Path(__file__).resolve().parent.parent

AGENT_FAMILIES = {
    "kata_agent_scrape_count": "counter",
    "kata_agent_threads": "gauge",
    "kata_agent_total_time": "gauge",
    "kata_agent_total_vm": "gauge",
    "kata_agent_total_rss": "gauge",
    "kata_agent_proc_status": "gauge",
    "kata_agent_io_stat": "gauge",
    "kata_agent_proc_stat": "gauge",
}
GUEST_FAMILIES = {
    "kata_guest_load": ("item",),
    "kata_guest_tasks": ("item",),
    "kata_guest_cpu_time": ("cpu", "item"),
    "kata_guest_vm_stat": ("item",),
    "kata_guest_netdev_stat": ("interface", "item"),
    "kata_guest_diskstat": ("disk", "item"),
    "kata_guest_meminfo": ("item",),
}


@pytest.fixture
async def served(tmp_path):
    """(stub, client) of AgentService served in this process (its sandbox: only a reaper)."""
    reaper = Reaper()
    reaper.install()
    server = ttrpc.Server()
    service = AgentService(SimpleNamespace(reaper=reaper), Config())  # type: ignore[arg-type]
    server.register(AGENT, service)
    sock = tmp_path / "agent.sock"
    await server.serve_unix(str(sock))
    client = await ttrpc.Client.connect(str(sock))
    try:
        yield ttrpc.Stub(client, AGENT), client
    finally:
        await client.close()
        await server.shutdown(grace=0.5)
        reaper.uninstall()


@pytest.fixture
def agent(served):
    return served[0]


# -- GetMetrics ---------------------------------------------------------------------------
async def test_get_metrics_has_kata_families_and_well_formed_samples(agent):
    first = (await agent.GetMetrics(agent_pb2.GetMetricsRequest(), timeout=10)).metrics
    families = {f.name: f for f in parse(first, strict=True)}  # strict: every line reads
    for name, kind in AGENT_FAMILIES.items():
        assert families[name].kind == kind, name
    for name, labels in GUEST_FAMILIES.items():
        assert families[name].kind == "gauge", name
        for sample in families[name].samples:
            assert tuple(k for k, _ in sample.labels) == labels, (name, sample)
    for family in families.values():
        for sample in family.samples:
            assert math.isfinite(sample.value) and sample.value >= 0, (family.name, sample)
    assert families["kata_agent_scrape_count"].samples[0].value == 1
    assert families["kata_agent_threads"].samples[0].value >= 1
    assert families["kata_agent_total_rss"].samples[0].value > 1 << 20
    meminfo = {dict(s.labels)["item"]: s.value for s in families["kata_guest_meminfo"].samples}
    assert meminfo["mem_total"] > meminfo["mem_free"] > 0
    cpus = {dict(s.labels)["cpu"] for s in families["kata_guest_cpu_time"].samples}
    assert "total" in cpus and "0" in cpus
    assert {dict(s.labels)["interface"] for s in families["kata_guest_netdev_stat"].samples}
    again = (await agent.GetMetrics(agent_pb2.GetMetricsRequest(), timeout=10)).metrics
    assert "kata_agent_scrape_count 2\n" in again


def fake_proc(root: Path) -> Path:
    """A /proc with one of every file GetMetrics reads, with known numbers."""
    (root / "self").mkdir(parents=True)
    (root / "net").mkdir()
    (root / "self/stat").write_text(
        "42 (python3 (agent)) S 0 42 42 0 -1 4194560 100 0 0 0 "
        "250 50 7 3 20 0 4 0 99 123456789 2000 18446744073709551615\n"
    )
    (root / "self/status").write_text("Name:\tpython3\nVmPeak:\t  30000 kB\nVmRSS:\t   8000 kB\n"
                                      "voluntary_ctxt_switches:\t12\n")  # fmt: skip
    (root / "self/io").write_text("rchar: 10\nwchar: 20\nsyscr: 3\nsyscw: 4\nread_bytes: 0\n"
                                  "write_bytes: 4096\ncancelled_write_bytes: 0\n")  # fmt: skip
    (root / "loadavg").write_text("0.50 0.25 0.10 2/87 1234\n")
    (root / "stat").write_text("cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 100 0 50 1000 5 0 1 0 0 0\n"
                               "intr 1 2 3\nctxt 999\n")  # fmt: skip
    (root / "vmstat").write_text("nr_free_pages 1000\npgfault 55\n")
    (root / "net/dev").write_text(
        "Inter-|   Receive  |  Transmit\n face |bytes packets|bytes packets\n"
        "  eth0: 1500 10 0 0 0 0 0 0 3000 20 0 0 0 0 0 0\n"
        "    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    )
    (root / "diskstats").write_text("   8       0 vda 5 1 80 7 9 2 64 11 0 20 18\n")
    (root / "meminfo").write_text("MemTotal:  2048 kB\nMemFree:   1024 kB\nHugePages_Total: 3\n")
    return root


def by_item(family) -> dict[tuple[str, ...], float]:
    return {tuple(v for _, v in s.labels): s.value for s in family.samples}


def test_metrics_units_and_labels_as_kata(tmp_path):
    page = metrics.Metrics(str(fake_proc(tmp_path))).page()
    families = {f.name: f for f in parse(page, strict=True)}
    ticks = os.sysconf("SC_CLK_TCK")
    assert families["kata_agent_total_time"].samples[0].value == pytest.approx(300 / ticks)
    assert families["kata_agent_total_vm"].samples[0].value == 123456789
    assert families["kata_agent_total_rss"].samples[0].value == 2000 * os.sysconf("SC_PAGE_SIZE")
    assert families["kata_agent_threads"].samples[0].value == 4
    status = by_item(families["kata_agent_proc_status"])
    assert status[("vmpeak",)] == 30000 and status[("vmrss",)] == 8000  # kB, as Kata
    assert status[("voluntary_ctxt_switches",)] == 12 and status[("vmswap",)] == 0
    assert by_item(families["kata_agent_proc_stat"]) == {
        ("utime",): 250, ("stime",): 50, ("cutime",): 7, ("cstime",): 3}
    assert by_item(families["kata_agent_io_stat"])[("write_bytes",)] == 4096
    assert by_item(families["kata_guest_load"]) == {
        ("load1",): 0.5, ("load5",): 0.25, ("load15",): 0.1}
    assert by_item(families["kata_guest_tasks"]) == {("cur",): 2, ("max",): 87}
    cpu = by_item(families["kata_guest_cpu_time"])
    assert cpu[("total", "user")] == 100 * 1000 // ticks  # ms
    assert cpu[("0", "guest_nice")] == 0 and len(cpu) == 20
    assert by_item(families["kata_guest_vm_stat"]) == {("nr_free_pages",): 1000, ("pgfault",): 55}
    netdev = by_item(families["kata_guest_netdev_stat"])
    assert netdev[("eth0", "recv_bytes")] == 1500 and netdev[("eth0", "sent_packets")] == 20
    assert len(netdev) == 32
    disk = by_item(families["kata_guest_diskstat"])
    assert disk[("vda", "sectors_written")] == 64 and disk[("vda", "flushes")] == 0
    assert len(disk) == len(metrics.DISK_ITEMS)
    mem = by_item(families["kata_guest_meminfo"])
    assert mem[("mem_total",)] == 2048 * 1024 and mem[("hugepages_total",)] == 3  # bytes; counts
    assert mem[("mem_available",)] == 0 and len(mem) == len(metrics.MEMINFO_ITEMS)


def test_metrics_survive_missing_files(tmp_path):
    families = {f.name: f for f in parse(metrics.Metrics(str(tmp_path)).page(), strict=True)}
    assert set(families) == set(AGENT_FAMILIES) | set(GUEST_FAMILIES)
    assert families["kata_guest_meminfo"].samples == []


def test_agent_start_up_loads_none_of_it():
    """The boot path imports no metrics writer, console or iptables code."""
    import subprocess

    code = (
        "import sys, agent.__main__, agent.service, agent.config\n"
        "names = ('agent.metrics', 'agent.debug_console', 'agent.iptables', 'agent.volumes',\n"
        "         'agent.entropy', 'pykata_common.exposition')\n"
        "print([n for n in names if n in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


# -- Get/SetIPTables -------------------------------------------------------------------------
FAKE = """#!/bin/sh
echo "$0 $*" > "{log}/$(basename "$0").argv"
cat > "{log}/$(basename "$0").stdin"
if [ -e "{log}/fail" ]; then echo "line 2 failed" >&2; exit 2; fi
echo "$(basename "$0") says hello"
"""


@pytest.fixture
def fake_iptables(tmp_path, monkeypatch) -> Path:
    """iptables-save/-restore and ip6tables-* as scripts that record argv and stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"):
        script = bin_dir / name
        script.write_text(FAKE.format(log=tmp_path))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return tmp_path


async def test_set_iptables_feeds_restore_and_answers_its_output(agent, fake_iptables):
    rules = b"*filter\n" + b"-A INPUT -s 10.0.0.1 -j DROP\n" * 20000 + b"COMMIT\n"  # > a pipe
    answer = await agent.SetIPTables(agent_pb2.SetIPTablesRequest(data=rules), timeout=30)
    assert answer.data == b"iptables-restore says hello\n"
    assert (fake_iptables / "iptables-restore.stdin").read_bytes() == rules
    argv = (fake_iptables / "iptables-restore.argv").read_text().split()
    assert Path(argv[0]).name == "iptables-restore" and argv[1:] == ["--wait", "5"]
    answer = await agent.SetIPTables(
        agent_pb2.SetIPTablesRequest(is_ipv6=True, data=b"*filter\nCOMMIT\n"), timeout=30)
    assert answer.data == b"ip6tables-restore says hello\n"


async def test_get_iptables_answers_save_output(agent, fake_iptables):
    answer = await agent.GetIPTables(agent_pb2.GetIPTablesRequest(), timeout=30)
    assert answer.data == b"iptables-save says hello\n"
    answer = await agent.GetIPTables(agent_pb2.GetIPTablesRequest(is_ipv6=True), timeout=30)
    assert answer.data == b"ip6tables-save says hello\n"
    assert (fake_iptables / "ip6tables-save.stdin").read_bytes() == b""  # stdin: /dev/null


async def test_iptables_failure_is_internal_with_its_stderr(agent, fake_iptables):
    (fake_iptables / "fail").touch()
    with pytest.raises(TTRPCError) as caught:
        await agent.SetIPTables(agent_pb2.SetIPTablesRequest(data=b"junk\n"), timeout=30)
    assert caught.value.code == Code.INTERNAL
    assert caught.value.message == "iptables-restore failed: line 2 failed"


async def test_iptables_missing_from_the_image(agent, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    for call, request, name in (
        (agent.SetIPTables, agent_pb2.SetIPTablesRequest(data=b"x"), "iptables-restore"),
        (agent.GetIPTables, agent_pb2.GetIPTablesRequest(is_ipv6=True), "ip6tables-save"),
    ):
        with pytest.raises(TTRPCError) as caught:
            await call(request, timeout=10)
        assert caught.value.code == Code.FAILED_PRECONDITION
        assert caught.value.message == f"{name} not found in the guest image"


# -- volumes ---------------------------------------------------------------------------------
async def test_get_volume_stats_bytes_and_inodes(agent, tmp_path):
    (tmp_path / "volume").mkdir()
    answer = await agent.GetVolumeStats(
        agent_pb2.VolumeStatsRequest(volume_guest_path=str(tmp_path / "volume")), timeout=10)
    fs = os.statvfs(tmp_path)
    by_unit = {u.unit: u for u in answer.usage}
    Unit = agent_pb2.VolumeUsage.Unit
    assert set(by_unit) == {Unit.BYTES, Unit.INODES}
    size = by_unit[Unit.BYTES]
    assert size.total == fs.f_blocks * fs.f_frsize
    assert size.used == size.total - size.available
    assert abs(size.available - fs.f_bfree * fs.f_frsize) < 64 << 20  # the disk is shared
    inodes = by_unit[Unit.INODES]
    assert inodes.total == fs.f_files and inodes.used == inodes.total - inodes.available
    assert (answer.volume_condition.abnormal, answer.volume_condition.message) == (False, "OK")


@pytest.mark.parametrize(
    ("path", "code"), [("relative/dir", Code.INVALID_ARGUMENT), ("", Code.INVALID_ARGUMENT),
                       ("/no/such/volume", Code.NOT_FOUND)])  # fmt: skip
async def test_get_volume_stats_bad_paths(agent, path, code):
    with pytest.raises(TTRPCError) as caught:
        await agent.GetVolumeStats(agent_pb2.VolumeStatsRequest(volume_guest_path=path))
    assert caught.value.code == code


async def test_resize_volume_refuses_what_is_not_on_a_block_device(agent):
    with pytest.raises(TTRPCError) as caught:
        await agent.ResizeVolume(
            agent_pb2.ResizeVolumeRequest(volume_guest_path="/proc/self", size=1 << 30))
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert "/proc is a proc filesystem" in caught.value.message
    assert "not on a block device" in caught.value.message


def test_mount_of_picks_the_deepest_mount(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "1 0 0:1 / / rw - rootfs rootfs rw\n"
        "2 1 0:2 / /run rw - tmpfs tmpfs rw\n"
        "3 2 0:3 / /run/kata\\040vol rw shared:1 - virtiofs kataShared rw\n"
        "4 1 254:0 / /data rw - ext4 /dev/vda rw\n"
    )
    assert volumes.mount_of("/run/kata vol/x", str(info)) == volumes.Mount(
        "/run/kata vol", "virtiofs", "kataShared")
    assert volumes.mount_of("/run/katavol", str(info)).point == "/run"
    assert volumes.mount_of("/", str(info)).fstype == "rootfs"


def test_grow_command_per_filesystem(tmp_path, monkeypatch):
    device = tmp_path / "vdb"
    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(254, 16))  # only stat()ed, never opened
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TTRPCError, match="resize2fs not found in the guest image") as caught:
        volumes.grow_command(volumes.Mount("/data", "ext4", str(device)))
    assert caught.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(TTRPCError, match="cannot resize a btrfs filesystem"):
        volumes.grow_command(volumes.Mount("/data", "btrfs", str(device)))
    growfs = tmp_path / "xfs_growfs"
    growfs.write_text("#!/bin/sh\n")
    growfs.chmod(0o755)
    assert volumes.grow_command(volumes.Mount("/data", "xfs", str(device))) == [
        str(growfs), "/data"]
    with pytest.raises(TTRPCError, match="tmpfs filesystem on 'tmpfs', not on a block device"):
        volumes.grow_command(volumes.Mount("/run", "tmpfs", "tmpfs"))


# -- ReseedRandomDev -------------------------------------------------------------------------
async def test_reseed_random_dev(agent, tmp_path, monkeypatch):
    """No random device here: the ioctl is refused (ENOTTY) and the bytes are written."""
    monkeypatch.setattr(entropy, "RANDOM", str(tmp_path / "random"))
    monkeypatch.setattr(entropy, "URANDOM", str(tmp_path / "urandom"))
    (tmp_path / "random").write_bytes(b"")
    await agent.ReseedRandomDev(agent_pb2.ReseedRandomDevRequest(data=b"\x01" * 512), timeout=10)
    assert (tmp_path / "urandom").read_bytes() == b"\x01" * 512
    assert (tmp_path / "random").read_bytes() == b""
    with pytest.raises(TTRPCError) as caught:
        await agent.ReseedRandomDev(agent_pb2.ReseedRandomDevRequest(), timeout=10)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message == "missing entropy data"


def test_reseed_names_an_unusable_device(tmp_path):
    with pytest.raises(TTRPCError, match=r"open .*/missing") as caught:
        entropy.reseed(b"x", random=str(tmp_path / "missing"))
    assert caught.value.code == Code.INTERNAL
    assert entropy.reseed(b"x", random=os.devnull, urandom=str(tmp_path / "u")) == "write"


# -- what stays unimplemented --------------------------------------------------------------
async def test_other_methods_stay_unimplemented(served):
    _, client = served
    for method in ("UpdateEphemeralMounts", "AddSwap", "SetPolicy", "MemHotplugByProbe"):
        with pytest.raises(TTRPCError) as caught:
            await client.call("grpc.AgentService", method, b"", timeout=5)
        assert caught.value.code == Code.UNIMPLEMENTED, method
