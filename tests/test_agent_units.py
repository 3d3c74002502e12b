"""The agent's parts in-process: spec conversion, buffers, the reaper, the channel loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import ttrpc
from agent import channel, oci
from agent.children import Reaper, exit_status, run, spawn
from agent.health import HealthService
from agent.sandbox import resolv_conf_lines
from agent.stdio import OutputBuffer
from protos.kata import health_pb2, oci_pb2
from ttrpc import Code, TTRPCError

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


# -- OCI conversion -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kata", "oci_name"),
    [
        ("UIDMappings", "uidMappings"),
        ("HostID", "hostID"),
        ("UID", "uid"),
        ("OOMScoreAdj", "oomScoreAdj"),
        ("KernelTCP", "kernelTCP"),
        ("DisableOOMKiller", "disableOOMKiller"),
        ("ThrottleReadIOPSDevice", "throttleReadIOPSDevice"),
        ("L3CacheSchema", "l3CacheSchema"),
        ("CgroupsPath", "cgroupsPath"),
        ("Version", "ociVersion"),
        ("Pagesize", "pageSize"),
        ("errnoret", "errnoRet"),
        ("destination", "destination"),
    ],
)
def test_json_names(kata, oci_name):
    assert oci.json_name(kata) == oci_name


def full_spec(root: str) -> oci_pb2.Spec:
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(
            Terminal=True,
            ConsoleSize=oci_pb2.Box(Height=24, Width=80),
            User=oci_pb2.User(UID=1000, GID=1000, AdditionalGids=[5, 6]),
            Args=["sh"],
            Env=["PATH=/bin"],
            Capabilities=oci_pb2.LinuxCapabilities(Bounding=["CAP_KILL"], Effective=["CAP_KILL"]),
            Rlimits=[oci_pb2.POSIXRlimit(Type="RLIMIT_NOFILE", Hard=1024, Soft=1024)],
            NoNewPrivileges=True,
            ApparmorProfile="host-profile",
            SelinuxLabel="system_u:x",
        ),
        Root=oci_pb2.Root(Path=root, Readonly=True),
        Hostname="h",
        Mounts=[oci_pb2.Mount(destination="/proc", source="proc", type="proc", options=["ro"])],
        Hooks=oci_pb2.Hooks(Prestart=[oci_pb2.Hook(Path="/host/hook")]),
        Annotations={"io.kubernetes.cri.container-type": "container"},
        Linux=oci_pb2.Linux(
            UIDMappings=[oci_pb2.LinuxIDMapping(HostID=1, ContainerID=0, Size=1)],
            Sysctl={"net.ipv4.ip_forward": "1"},
            Resources=oci_pb2.LinuxResources(
                Devices=[oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm")],
                Memory=oci_pb2.LinuxMemory(Limit=1 << 20, DisableOOMKiller=True),
                CPU=oci_pb2.LinuxCPU(Shares=512, Quota=50000, Period=100000, Cpus="0"),
                HugepageLimits=[oci_pb2.LinuxHugepageLimit(Pagesize="2MB", Limit=0)],
            ),
            CgroupsPath="/kubepods/pod1/c1",
            Namespaces=[
                oci_pb2.LinuxNamespace(Type="pid"),
                oci_pb2.LinuxNamespace(Type="network", Path="/var/run/netns/cni-1"),
                oci_pb2.LinuxNamespace(Type="mount"),
            ],
            Seccomp=oci_pb2.LinuxSeccomp(
                DefaultAction="SCMP_ACT_ERRNO",
                Syscalls=[
                    oci_pb2.LinuxSyscall(Names=["read"], Action="SCMP_ACT_ALLOW", errnoret=0)
                ],
            ),
            MaskedPaths=["/proc/kcore"],
            MountLabel="label",
        ),
    )


def test_container_config_maps_and_adapts_the_spec(tmp_path):
    config = oci.container_config(
        full_spec(str(tmp_path)), default_root="/unused", cgroups_path="/pykata/c1"
    )
    process = config["process"]
    assert config["ociVersion"] == "1.0.2"
    assert process["consoleSize"] == {"height": 24, "width": 80}
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [5, 6]}
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert process["noNewPrivileges"] is True and process["cwd"] == "/"
    assert "apparmorProfile" not in process and "selinuxLabel" not in process
    assert config["root"] == {"path": str(tmp_path), "readonly": True}
    assert "hooks" not in config  # host paths: meaningless in the VM
    assert config["annotations"] == {"io.kubernetes.cri.container-type": "container"}
    linux = config["linux"]
    assert linux["uidMappings"] == [{"hostID": 1, "size": 1}]  # containerID 0 omitted
    assert linux["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert linux["namespaces"] == [{"type": "pid"}, {"type": "mount"}]  # network: the VM's
    assert linux["cgroupsPath"] == "/pykata/c1"  # not the host's
    resources = linux["resources"]
    assert resources["devices"] == [{"access": "rwm"}]  # allow: false is the default
    assert resources["memory"] == {"limit": 1 << 20, "disableOOMKiller": True}
    assert resources["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}
    assert resources["hugepageLimits"] == [{"pageSize": "2MB"}]
    syscall = linux["seccomp"]["syscalls"][0]
    assert syscall == {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 0}
    assert "mountLabel" not in linux


def test_container_config_default_root_and_pid_namespace(tmp_path):
    spec = full_spec("rootfs")
    config = oci.container_config(
        spec,
        default_root=str(tmp_path),
        cgroups_path="/p/c",
        pid_namespace="/proc/42/ns/pid",
    )
    assert config["root"]["path"] == str(tmp_path)
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in config["linux"]["namespaces"]


@pytest.mark.parametrize(
    "pid", [None, oci_pb2.LinuxNamespace(Type="pid", Path="/proc/1/ns/pid")], ids=["none", "path"]
)
def test_a_container_always_gets_a_pid_namespace_never_one_the_spec_names(tmp_path, pid):
    """No pid namespace in the spec, or one by path, would be the guest's own (the agent's):
    the container gets a new one, or the pod's when the agent gives it."""
    spec = full_spec(str(tmp_path))
    del spec.Linux.Namespaces[:]
    spec.Linux.Namespaces.extend([pid] if pid else [])
    config = oci.container_config(spec, default_root="/x", cgroups_path="/p/c")
    assert config["linux"]["namespaces"] == [{"type": "pid"}]
    config = oci.container_config(
        spec, default_root="/x", cgroups_path="/p/c", pid_namespace="/proc/42/ns/pid"
    )
    assert config["linux"]["namespaces"] == [{"type": "pid", "path": "/proc/42/ns/pid"}]


def test_container_config_errors_say_what_is_wrong(tmp_path):
    spec = full_spec(str(tmp_path / "missing"))
    with pytest.raises(TTRPCError) as caught:
        oci.container_config(spec, default_root="/x", cgroups_path="/p/c")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "missing" in caught.value.message and "not a directory" in caught.value.message
    with pytest.raises(TTRPCError) as caught:
        oci.check_id("container id", "a/b")
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_resolv_conf_lines():
    assert resolv_conf_lines(["nameserver 198.18.0.1", "198.18.0.2", "search a.b", " "]) == (
        "nameserver 198.18.0.1\nnameserver 198.18.0.2\nsearch a.b\n"
    )


# -- output buffer ---------------------------------------------------------------------------
async def test_output_buffer_stops_reading_when_full_and_resumes():
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    buffer = OutputBuffer(read_end, limit=128 * 1024)
    written = 0
    for _ in range(200):
        try:
            written += os.write(write_end, b"x" * 65536)
        except BlockingIOError:
            await asyncio.sleep(0.01)  # let the loop read
    # the agent holds at most its limit (plus one read); the rest waits in the pipe
    assert 128 * 1024 <= buffer.buffered < 128 * 1024 + 65536
    assert written < 200 * 65536
    os.close(write_end)
    total = 0
    while chunk := await buffer.read(100_000):
        total += len(chunk)
    assert total == written
    assert buffer.eof


async def test_output_buffer_close_wakes_readers():
    read_end, write_end = os.pipe()
    buffer = OutputBuffer(read_end)
    reader = asyncio.create_task(buffer.read(10))
    await asyncio.sleep(0.05)
    assert not reader.done()
    buffer.close()
    assert await reader == b""
    os.close(write_end)


# -- children ---------------------------------------------------------------------------------
async def test_reaper_statuses_and_late_watchers():
    reaper = Reaper()
    reaper.install()
    try:
        done = await run(reaper, ["/bin/sh", "-c", "echo out; echo err >&2; exit 5"])
        assert (done.status, done.stdout, done.stderr) == (5, b"out\n", b"err\n")
        killed = spawn(["/bin/sleep", "100"])
        os.kill(killed, 9)
        assert await reaper.watch(killed) == 137
        # a child that exits before anyone watches it is remembered
        early = spawn(["/bin/sh", "-c", "exit 9"])
        await asyncio.sleep(0.3)
        assert await reaper.watch(early) == 9
        done = await run(reaper, ["/bin/cat"], input=b"fed")
        assert done.stdout == b"fed"
        with pytest.raises(TimeoutError):
            await run(reaper, ["/bin/sleep", "100"], timeout=0.2)
    finally:
        reaper.uninstall()
    assert exit_status(0) == 0 and exit_status(9) == 137 and exit_status(3 << 8) == 3


def test_the_vsock_listening_notice_reaches_the_console_at_any_log_level(capfd):
    """The host dials hybrid vsock only once the console says the agent listens."""
    import logging

    from pykata_common.contract import VSOCK_LISTENING_NOTICE

    logger = logging.getLogger("agent.channel")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    old = logger.level
    try:
        for level in (logging.INFO, logging.WARNING):
            logger.setLevel(level)
            channel.announce("vsock://1024")
            assert VSOCK_LISTENING_NOTICE + "1024" in capfd.readouterr().err
    finally:
        logger.setLevel(old)
        logger.removeHandler(handler)


# -- the channel: a host that goes and comes back -----------------------------------------------
async def test_serial_style_channel_serves_the_next_host_session():
    """serve_reconnecting: each session on a fresh fd; the host side closes and reconnects.

    A raw pty stands in for the virtio-serial port: a character device, like
    /dev/vportNpM, whose reads fail once the other side (the "host") is gone.
    """
    import tty

    server = ttrpc.Server()
    server.register(HEALTH, HealthService())
    host_ends: asyncio.Queue[int] = asyncio.Queue()

    def acquire() -> int:
        host, guest = os.openpty()
        tty.setraw(guest)
        host_ends.put_nowait(host)
        return guest

    serving = asyncio.create_task(channel.serve_reconnecting(server.serve_pipes, acquire))
    try:
        for _ in range(3):
            host = await asyncio.wait_for(host_ends.get(), 5)
            client = await ttrpc.Client.from_pipes(host, host)
            answer = await ttrpc.Stub(client, HEALTH).Check(health_pb2.CheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            await client.close()  # the host goes away; the agent must serve the next one
    finally:
        serving.cancel()
        await server.shutdown(grace=0.5)


def test_serial_port_lookup(tmp_path):
    for entry, name in (("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", "agent.channel.0")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    assert channel.serial_port("agent.channel.0", str(tmp_path)) == "/dev/vport1p1"
    assert channel.serial_port("nothing", str(tmp_path)) is None


def python_in_checkout(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by a fresh interpreter in the checkout: what it imports is its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)


def test_agent_help_imports_little():
    """The entry point starts without the heavy modules (they load on first use)."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['agent', '--help']\n"
        "try:\n"
        "    runpy.run_module('agent', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'ctypes', 'json', 'agent.network', 'agent.container', 'asyncio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    assert python_in_checkout(code).stdout.strip().splitlines()[-1] == "[]"


def test_spec_conversion_keeps_protobuf_descriptor_messages_unloaded(tmp_path):
    """Maps are told apart by their value, not by descriptor options: asking for options
    imports descriptor_pb2 and builds its messages in every booted VM's first create."""
    code = (
        "import sys\n"
        "from agent import oci\n"
        "from protos.kata import oci_pb2\n"
        "spec = oci_pb2.Spec(Annotations={'a': 'b'}, Linux=oci_pb2.Linux(Sysctl={'k': 'v'}))\n"
        "out = oci.to_json(spec)\n"
        "print(out['annotations'], out['linux']['sysctl'],"
        " 'google.protobuf.descriptor_pb2' in sys.modules)\n"
    )
    out = python_in_checkout(code)
    assert out.stdout.strip() == "{'a': 'b'} {'k': 'v'} False", out.stderr


# -- OOM events (cgroup v2 layout, faked in a folder) ------------------------------------
async def test_oom_watcher_v2_counts_new_kills(tmp_path, monkeypatch):
    from agent import oom

    monkeypatch.setattr(oom, "V2_POLL", 0.01)
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    events = tmp_path / "pykata" / "c1" / "memory.events"
    events.parent.mkdir(parents=True)
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")  # a kill before the watch
    watcher = oom.OomWatcher(str(tmp_path))
    watcher.watch("c1", "/pykata/c1")
    waiting = asyncio.create_task(watcher.next())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the old kill is not news
    events.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 3\n")
    assert await asyncio.wait_for(waiting, 2) == "c1"
    assert await asyncio.wait_for(watcher.next(), 2) == "c1"  # two new kills, two events
    watcher.close()


def test_ipc_sysctls_of_a_container_sharing_the_vms_ipc_namespace_are_the_pods():
    """A CRI pod's containers share the VM's IPC namespace: kernel.shm_rmid_forced set for
    the pod (on its sandbox container) must hold in every container, so the agent writes
    it where they all are."""
    config = {"linux": {"sysctl": {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "20",
                                   "kernel.hostname": "x", "net.core.somaxconn": "512"},
                        "namespaces": [{"type": "uts"}, {"type": "mount"}]}}
    assert oci.take_pod_sysctls(config) == {"kernel.shm_rmid_forced": "1",
                                            "fs.mqueue.msg_max": "20",
                                            "net.core.somaxconn": "512"}
    assert config["linux"]["sysctl"] == {"kernel.hostname": "x"}  # crun sets it in its uts


@pytest.mark.parametrize("key", ["vm.swappiness", "kernel.pid_max", "fs.file-max"])
def test_a_sysctl_that_is_not_namespaced_is_refused(key):
    with pytest.raises(TTRPCError) as caught:
        oci.take_pod_sysctls({"linux": {"sysctl": {key: "1"}}})
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert f"sysctl {key} is not namespaced" in caught.value.message


def test_network_sysctls_are_the_pods_and_written_by_the_agent(tmp_path):
    """crun refuses net.* sysctls without a netns of the container's own; the VM's is the pod's."""
    config = {"linux": {"sysctl": {"net.ipv4.ip_unprivileged_port_start": "0",
                                   "kernel.shm_rmid_forced": "1"},
                        "namespaces": [{"type": "ipc"}]}}
    taken = oci.take_pod_sysctls(config)
    assert taken == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert config["linux"]["sysctl"] == {"kernel.shm_rmid_forced": "1"}
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/ip_unprivileged_port_start").write_text("1024")
    oci.apply_sysctls(taken, proc_sys=str(tmp_path))
    assert (tmp_path / "net/ipv4/ip_unprivileged_port_start").read_text() == "0"
    with pytest.raises(TTRPCError) as caught:
        oci.apply_sysctls({"net.ipv4.no_such_knob": "1"}, proc_sys=str(tmp_path))
    assert caught.value.code == Code.INVALID_ARGUMENT and "no_such_knob" in caught.value.message
    with pytest.raises(TTRPCError, match="not valid"):
        oci.apply_sysctls({"net/../../etc": "1"}, proc_sys=str(tmp_path))


def test_shared_bind_sources_are_reached_from_the_agents_namespace_first(tmp_path, monkeypatch):
    """A pod volume's virtiofs submount must be mounted in the agent's namespace before
    crun copies it, or each container gets a filesystem of its own: the agent opens each
    shared folder a container binds (an open mounts it; stat would not)."""
    shared = tmp_path / "shared"
    (shared / ".volumes" / "v").mkdir(parents=True)
    (shared / "c1").mkdir()
    (shared / "c1" / "hosts").touch()
    opened = []
    real_open = os.open
    monkeypatch.setattr(oci.os, "open", lambda path, flags, *a: opened.append(path)
                        or real_open(path, flags, *a))
    config = {"mounts": [
        {"destination": "/data", "source": f"{shared}/.volumes/v", "type": "bind"},
        {"destination": "/etc/hosts", "source": f"{shared}/c1/hosts", "type": "bind"},
        {"destination": "/proc", "source": "proc", "type": "proc"},
        {"destination": "/x", "source": "/elsewhere", "type": "bind"},
    ]}
    oci.mount_shared_sources(config, str(shared))
    assert opened == [f"{shared}/.volumes/v", f"{shared}/c1/hosts"]  # the file: ENOTDIR
