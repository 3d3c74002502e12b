"""The agent as the shim sees it: a subprocess on a Unix socket, busybox containers.

Every test runs once per OCI runtime installed on the host (runc; crun too when
installed): the guest image ships both, the agent prefers crun.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest
from agent_support import RUNTIMES, Agent, build_rootfs, requires_agent_host, running_agent, spec

from protos.kata import agent_pb2, health_pb2, oci_pb2
from ttrpc import Code, TTRPCError

pytestmark = [requires_agent_host, pytest.mark.timeout(120)]


@pytest.fixture(params=RUNTIMES)
async def agent(request, tmp_path):
    async with running_agent(tmp_path, request.param) as running:
        yield running


@pytest.fixture
async def sandbox(agent):
    await agent.agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="pod-a", dns=["nameserver 198.18.0.53", "search pod.test"], sandbox_id="sb"
        )
    )
    return agent


def code_of(excinfo: pytest.ExceptionInfo[TTRPCError]) -> Code:
    return excinfo.value.code


# -- health and service surface -----------------------------------------------------------
async def test_health_check_and_version(agent):
    answer = await agent.health.Check(health_pb2.CheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    version = await agent.health.Version(health_pb2.CheckRequest())
    assert version.agent_version.startswith("pykata-agent ")
    assert version.grpc_version


@pytest.mark.parametrize(
    "method", ["UpdateEphemeralMounts", "AddSwap", "SetPolicy", "MemHotplugByProbe"]
)
async def test_methods_we_do_not_have_are_unimplemented(agent, method):
    with pytest.raises(TTRPCError) as caught:
        await agent.client.call("grpc.AgentService", method, b"")
    assert code_of(caught) == Code.UNIMPLEMENTED


async def test_guest_details(agent):
    details = await agent.agent.GetGuestDetails(agent_pb2.GuestDetailsRequest(mem_block_size=True))
    assert details.agent_details.init_daemon is False
    assert "virtio-fs" in details.agent_details.storage_handlers
    assert details.agent_details.version


async def test_create_sandbox_sets_hostname_and_dns(sandbox):
    assert sandbox.resolv_conf.read_text() == "nameserver 198.18.0.53\nsearch pod.test\n"
    hostname = subprocess.run(
        ["nsenter", "-t", str(sandbox.pid), "-u", "hostname"], capture_output=True, text=True
    ).stdout.strip()
    assert hostname == "pod-a"
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(sandbox_id="sb"))
    assert code_of(caught) == Code.ALREADY_EXISTS


async def test_sandbox_storage_bind_stands_in_for_virtiofs(agent, tmp_path):
    """The shared dir arrives as a storage; containers find their rootfs in it."""
    host_share = tmp_path / "host-share"
    build_rootfs(host_share / "shared1" / "rootfs")
    await agent.agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            sandbox_id="sb",
            storages=[
                agent_pb2.Storage(
                    driver="bind",
                    source=str(host_share),
                    mount_point=str(agent.shared_dir),
                )
            ],
        )
    )
    await agent.agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id="shared1", exec_id="shared1", OCI=spec(["echo", "from the share"])
        )
    )
    await agent.agent.StartContainer(agent_pb2.StartContainerRequest(container_id="shared1"))
    assert await agent.read_all("shared1") == b"from the share\n"
    assert await agent.wait("shared1") == 0
    await agent.agent.DestroySandbox(agent_pb2.DestroySandboxRequest())
    mounts = subprocess.run(
        ["nsenter", "-t", str(agent.pid), "-m", "cat", "/proc/self/mountinfo"],
        capture_output=True,
        text=True,
    ).stdout
    assert str(agent.shared_dir) not in mounts  # unmounted with the sandbox


# -- the container's init -----------------------------------------------------------------
async def test_init_stdio_and_exit_status(sandbox):
    await sandbox.create("c1", ["sh", "-c", "echo out; echo err >&2; cat; exit 3"])
    written = await sandbox.agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id="c1", exec_id="c1", data=b"from stdin\n")
    )
    assert written.len == len(b"from stdin\n")
    await sandbox.agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id="c1", exec_id="c1"))
    assert await sandbox.read_all("c1") == b"out\nfrom stdin\n"
    assert await sandbox.read_all("c1", stderr=True) == b"err\n"
    assert await sandbox.wait("c1") == 3
    assert await sandbox.wait("c1", "c1") == 3  # again, and by the init's exec id
    await sandbox.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="c1"))


async def test_wait_after_exit_and_read_after_exit(sandbox):
    await sandbox.create("late", ["sh", "-c", "echo bye; exit 42"])
    await asyncio.sleep(0.5)  # it has exited and been reaped long before anyone asks
    assert await sandbox.wait("late") == 42
    assert await sandbox.read_all("late") == b"bye\n"


async def test_container_sees_its_spec(sandbox):
    await sandbox.create(
        "seen",
        ["sh", "-c", "echo $FOO $(hostname) $(pwd) $$; tail -n +3 /proc/net/dev | cut -d: -f1"],
        env=("PATH=/bin", "FOO=bar"),
        hostname="seen-host",
        cwd="/tmp",
    )
    out = (await sandbox.read_all("seen")).decode().split()
    # env, uts namespace with the spec's hostname, cwd, its own pid namespace (pid 1),
    # and the VM's network (the agent's namespace: only lo here), not a new one
    assert out[:4] == ["bar", "seen-host", "/tmp", "1"]
    assert out[4:] == ["lo"]
    assert await sandbox.wait("seen") == 0


async def test_output_back_pressure_then_full_read(sandbox):
    """3 MB of output with nobody reading: the process blocks, the agent buffers ~1 MiB."""
    await sandbox.create("flood", ["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"])
    with pytest.raises(TTRPCError) as caught:
        await sandbox.wait("flood", timeout=0.8)
    assert code_of(caught) == Code.DEADLINE_EXCEEDED  # still blocked in write()
    data = await sandbox.read_all("flood")
    assert len(data) == 3_000_000 and data.count(0) == 3_000_000
    assert await sandbox.read_all("flood", stderr=True) == b"done\n"
    assert await sandbox.wait("flood") == 0


async def test_signal_init_and_remove(sandbox):
    await sandbox.create("sleeper", ["sleep", "1000"])
    # SIGTERM to a PID 1 without a handler would be ignored: the agent makes it SIGKILL
    await sandbox.agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id="sleeper", exec_id="", signal=signal.SIGTERM)
    )
    assert await sandbox.wait("sleeper") == 128 + signal.SIGKILL
    await sandbox.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="sleeper"))
    with pytest.raises(TTRPCError) as caught:
        await sandbox.wait("sleeper")
    assert code_of(caught) == Code.NOT_FOUND


async def test_remove_running_container_kills_it(sandbox):
    await sandbox.create("busy", ["sleep", "1000"])
    await sandbox.exec("busy", "e1", ["sleep", "1000"])
    await sandbox.agent.RemoveContainer(
        agent_pb2.RemoveContainerRequest(container_id="busy", timeout=10)
    )
    assert sandbox.runc_list() == []
    assert not (sandbox.run_dir / "busy").exists()


# -- exec -----------------------------------------------------------------------------------
async def test_exec_output_status_and_duplicate_id(sandbox):
    await sandbox.create("host", ["sleep", "1000"])
    await sandbox.exec("host", "e1", ["sh", "-c", "echo exec out; echo exec err >&2; exit 7"])
    assert await sandbox.read_all("host", "e1") == b"exec out\n"
    assert await sandbox.read_all("host", "e1", stderr=True) == b"exec err\n"
    assert await sandbox.wait("host", "e1") == 7
    with pytest.raises(TTRPCError) as caught:
        await sandbox.exec("host", "e1", ["true"])
    assert code_of(caught) == Code.ALREADY_EXISTS
    # the exec shares the init's pid namespace: it sees `sleep` as PID 1
    await sandbox.exec("host", "e2", ["cat", "/proc/1/cmdline"])
    assert await sandbox.read_all("host", "e2") == b"sleep\x001000\x00"
    assert await sandbox.wait("host", "e2") == 0


async def test_exec_stdin(sandbox):
    await sandbox.create("host", ["sleep", "1000"])
    await sandbox.exec("host", "cat", ["sh", "-c", "tr a-z A-Z"])
    await sandbox.agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id="host", exec_id="cat", data=b"shout\n")
    )
    await sandbox.agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id="host", exec_id="cat"))
    assert await sandbox.read_all("host", "cat") == b"SHOUT\n"
    assert await sandbox.wait("host", "cat") == 0


async def test_signal_exec_sleep_is_137(sandbox):
    await sandbox.create("host", ["sleep", "1000"])
    await sandbox.exec("host", "nap", ["sleep", "1000"])
    with pytest.raises(TTRPCError) as caught:
        await sandbox.wait("host", "nap", timeout=0.3)
    assert code_of(caught) == Code.DEADLINE_EXCEEDED
    await sandbox.agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id="host", exec_id="nap", signal=signal.SIGKILL)
    )
    assert await sandbox.wait("host", "nap") == 137
    # the init was not touched
    with pytest.raises(TTRPCError) as caught:
        await sandbox.wait("host", timeout=0.2)
    assert code_of(caught) == Code.DEADLINE_EXCEEDED
    # signalling a process that is gone is not an error
    await sandbox.agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id="host", exec_id="nap", signal=signal.SIGKILL)
    )


# -- terminals ----------------------------------------------------------------------------
async def test_tty_init_output_comes_through_the_pty(sandbox):
    await sandbox.create("tty", ["sh", "-c", "tty; echo hi"], terminal=True)
    out = await sandbox.read_all("tty")
    assert out == b"/dev/pts/0\r\nhi\r\n"  # the pty's line discipline turned \n into \r\n
    assert await sandbox.read_all("tty", stderr=True) == b""  # no separate stderr on a tty
    assert await sandbox.wait("tty") == 0


async def test_tty_exec_resize_and_stdin(sandbox):
    await sandbox.create("host", ["sleep", "1000"])
    await sandbox.exec(
        "host", "term", ["sh", "-c", "read line; stty size; echo got $line"], terminal=True
    )
    await sandbox.agent.TtyWinResize(
        agent_pb2.TtyWinResizeRequest(container_id="host", exec_id="term", row=33, column=101)
    )
    await sandbox.agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id="host", exec_id="term", data=b"typed\n")
    )
    out = await sandbox.read_all("host", "term")
    assert b"33 101\r\n" in out and b"got typed\r\n" in out
    assert await sandbox.wait("host", "term") == 0
    with pytest.raises(TTRPCError) as caught:  # no terminal, no resize
        await sandbox.agent.TtyWinResize(
            agent_pb2.TtyWinResizeRequest(container_id="host", exec_id="", row=1, column=1)
        )
    assert code_of(caught) == Code.FAILED_PRECONDITION


# -- pause, resume, stats, update, OOM ------------------------------------------------------
def runc_status(agent: Agent, cid: str) -> str:
    import json

    out = subprocess.run(agent.runtime_argv("state", cid), capture_output=True, text=True).stdout
    return json.loads(out)["status"]


async def test_pause_and_resume(sandbox):
    await sandbox.create("pz", ["sleep", "1000"])
    await sandbox.agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id="pz"))
    assert runc_status(sandbox, "pz") == "paused"
    with pytest.raises(TTRPCError) as caught:
        await sandbox.exec("pz", "e", ["true"])
    assert code_of(caught) == Code.FAILED_PRECONDITION
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id="pz"))
    assert code_of(caught) == Code.FAILED_PRECONDITION
    await sandbox.agent.ResumeContainer(agent_pb2.ResumeContainerRequest(container_id="pz"))
    assert runc_status(sandbox, "pz") == "running"
    await sandbox.exec("pz", "e", ["echo", "awake"])
    assert await sandbox.read_all("pz", "e") == b"awake\n"
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.ResumeContainer(agent_pb2.ResumeContainerRequest(container_id="pz"))
    assert code_of(caught) == Code.FAILED_PRECONDITION
    # a paused container can still be removed
    await sandbox.agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id="pz"))
    await sandbox.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="pz"))


async def test_stats_and_update(sandbox):
    await sandbox.create(
        "st",
        ["sh", "-c", "sleep 1000 & sleep 1000"],
        memory_limit=64 << 20,
    )
    await asyncio.sleep(0.3)
    stats = await sandbox.agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="st"))
    cgroup = stats.cgroup_stats
    assert cgroup.memory_stats.usage.limit == 64 << 20
    assert cgroup.memory_stats.usage.usage > 0
    assert cgroup.cpu_stats.cpu_usage.total_usage > 0
    assert cgroup.pids_stats.current >= 2  # sh and its sleeps
    await sandbox.agent.UpdateContainer(
        agent_pb2.UpdateContainerRequest(
            container_id="st",
            resources=oci_pb2.LinuxResources(
                Memory=oci_pb2.LinuxMemory(Limit=96 << 20), Pids=oci_pb2.LinuxPids(Limit=50)
            ),
        )
    )
    stats = await sandbox.agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="st"))
    assert stats.cgroup_stats.memory_stats.usage.limit == 96 << 20
    assert stats.cgroup_stats.pids_stats.limit == 50


@pytest.mark.parametrize("agent", ["runc"], indirect=True)  # crun has no `events --stats`
async def test_stats_match_runc_events(sandbox):
    """The figures read from the cgroup files are those `runc events --stats` gives."""
    import json

    from agent import stats

    await sandbox.create("ev", ["sh", "-c", "sleep 1000 & sleep 1000"], memory_limit=48 << 20)
    await asyncio.sleep(0.3)
    done = subprocess.run(
        sandbox.runtime_argv("events", "--stats", "ev"), capture_output=True, text=True, check=True
    )
    theirs = stats.cgroup_stats(json.loads(done.stdout)["data"])
    ours = (
        await sandbox.agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="ev"))
    ).cgroup_stats
    assert ours.memory_stats.usage.limit == theirs.memory_stats.usage.limit == 48 << 20
    assert ours.memory_stats.swap_usage.limit == theirs.memory_stats.swap_usage.limit
    assert ours.memory_stats.kernel_usage.limit == theirs.memory_stats.kernel_usage.limit
    assert set(ours.memory_stats.stats) == set(theirs.memory_stats.stats)
    assert ours.memory_stats.stats["hierarchical_memory_limit"] == 48 << 20
    assert ours.pids_stats == theirs.pids_stats
    ours_cpu, theirs_cpu = ours.cpu_stats.cpu_usage, theirs.cpu_stats.cpu_usage
    assert len(ours_cpu.percpu_usage) == len(theirs_cpu.percpu_usage) == os.cpu_count()
    assert ours_cpu.total_usage >= theirs_cpu.total_usage > 0  # read later, never less
    assert ours_cpu.usage_in_usermode >= theirs_cpu.usage_in_usermode
    assert ours.cpu_stats.throttling_data == theirs.cpu_stats.throttling_data
    assert ours.memory_stats.usage.max_usage >= theirs.memory_stats.usage.max_usage > 0
    assert ours.blkio_stats == theirs.blkio_stats
    assert dict(ours.hugetlb_stats) == dict(theirs.hugetlb_stats)


async def test_oom_kill_is_reported(sandbox):
    oom = asyncio.create_task(sandbox.agent.GetOOMEvent(agent_pb2.GetOOMEventRequest(), timeout=60))
    await sandbox.create(
        "hog",
        ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"],
        memory_limit=16 << 20,
    )
    assert await sandbox.wait("hog", timeout=60) == 137
    event = await oom
    assert event.container_id == "hog"


# -- errors ---------------------------------------------------------------------------------
async def test_unknown_container_or_process_is_not_found(sandbox):
    calls = [
        sandbox.agent.StartContainer(agent_pb2.StartContainerRequest(container_id="nope")),
        sandbox.agent.WaitProcess(agent_pb2.WaitProcessRequest(container_id="nope")),
        sandbox.agent.SignalProcess(agent_pb2.SignalProcessRequest(container_id="nope", signal=9)),
        sandbox.agent.ReadStdout(agent_pb2.ReadStreamRequest(container_id="nope", len=10)),
        sandbox.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="nope")),
        sandbox.agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="nope")),
        sandbox.agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id="nope")),
        sandbox.exec("nope", "e", ["true"]),
    ]
    for call in calls:
        with pytest.raises(TTRPCError) as caught:
            await call
        assert code_of(caught) == Code.NOT_FOUND, caught.value
    await sandbox.create("known", ["sleep", "1000"])
    with pytest.raises(TTRPCError) as caught:
        await sandbox.wait("known", "no-such-exec")
    assert code_of(caught) == Code.NOT_FOUND


async def test_double_create_is_already_exists(sandbox):
    await sandbox.create("twice", ["sleep", "1000"], start=False)
    with pytest.raises(TTRPCError) as caught:
        await sandbox.create("twice", ["sleep", "1000"], start=False)
    assert code_of(caught) == Code.ALREADY_EXISTS


async def test_double_start_is_failed_precondition(sandbox):
    await sandbox.create("started", ["sleep", "1000"])
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.StartContainer(agent_pb2.StartContainerRequest(container_id="started"))
    assert code_of(caught) == Code.FAILED_PRECONDITION


async def test_exec_into_stopped_or_unstarted_container_is_failed_precondition(sandbox):
    await sandbox.create("done", ["true"])
    assert await sandbox.wait("done") == 0
    with pytest.raises(TTRPCError) as caught:
        await sandbox.exec("done", "e", ["true"])
    assert code_of(caught) == Code.FAILED_PRECONDITION
    assert "stopped" in caught.value.message
    await sandbox.create("idle", ["true"], start=False)
    with pytest.raises(TTRPCError) as caught:
        await sandbox.exec("idle", "e", ["true"])
    assert code_of(caught) == Code.FAILED_PRECONDITION
    with pytest.raises(TTRPCError) as caught:  # and a stopped one cannot start again
        await sandbox.agent.StartContainer(agent_pb2.StartContainerRequest(container_id="done"))
    assert code_of(caught) == Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("cid", "build", "message"),
    [
        ("no-spec", lambda s: None, "without an OCI spec"),
        ("no-args", lambda s: s.Process.ClearField("Args"), "Args is empty"),
        ("rel-cwd", lambda s: setattr(s.Process, "Cwd", "tmp"), "not an absolute path"),
        ("no-root", lambda s: setattr(s.Root, "Path", "/does/not/exist"), "is not a directory"),
        ("bad-ns", lambda s: s.Linux.Namespaces.add(Type="galaxy"), "unknown namespace type"),
        ("bad-rlimit", lambda s: s.Process.Rlimits.add(Type="RLIMIT_FUN"), "unknown rlimit"),
        ("../escape", lambda s: None, "invalid container id"),
    ],
)
async def test_bad_spec_is_invalid_argument(sandbox, cid, build, message):
    request = agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid)
    if cid != "no-spec":
        request.OCI.CopyFrom(spec(["true"]))
        build(request.OCI)
        if cid != "../escape":
            sandbox.rootfs(cid)
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.CreateContainer(request)
    assert code_of(caught) == Code.INVALID_ARGUMENT
    assert message in caught.value.message
    # nothing is left half-made, and the id is free again
    assert not (sandbox.run_dir / cid).exists()


async def test_runc_failure_is_internal_with_runcs_message(sandbox):
    with pytest.raises(TTRPCError) as caught:
        await sandbox.create("nobin", ["/bin/does-not-exist"])
    assert code_of(caught) == Code.INTERNAL
    assert "does-not-exist" in caught.value.message
    assert sandbox.runc_list() == []
    await sandbox.create("nobin", ["true"])  # the id is free again
    assert await sandbox.wait("nobin") == 0


async def test_unsupported_storage_driver_is_invalid_argument(sandbox):
    sandbox.rootfs("blk")
    with pytest.raises(TTRPCError) as caught:
        await sandbox.agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id="blk",
                OCI=spec(["true"]),
                storages=[agent_pb2.Storage(driver="blk", source="/dev/vda", mount_point="/x")],
            )
        )
    assert code_of(caught) == Code.INVALID_ARGUMENT
    assert "'blk'" in caught.value.message


async def test_container_storage_ephemeral_tmpfs(sandbox, tmp_path):
    point = tmp_path / "ephemeral-vol"
    sandbox.rootfs("vol")
    await sandbox.agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id="vol",
            OCI=spec(
                ["sh", "-c", "grep ' /data ' /proc/mounts | cut -d' ' -f1,3"],
                mounts=(
                    oci_pb2.Mount(
                        destination="/data", source=str(point), type="bind", options=["rbind"]
                    ),
                ),
            ),
            storages=[
                agent_pb2.Storage(
                    driver="ephemeral", source="tmpfs", fstype="tmpfs", mount_point=str(point)
                )
            ],
        )
    )
    await sandbox.agent.StartContainer(agent_pb2.StartContainerRequest(container_id="vol"))
    assert await sandbox.read_all("vol") == b"tmpfs tmpfs\n"
    assert await sandbox.wait("vol") == 0
    await sandbox.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="vol"))
    mounts = subprocess.run(
        ["nsenter", "-t", str(sandbox.pid), "-m", "cat", "/proc/self/mountinfo"],
        capture_output=True,
        text=True,
    ).stdout
    assert str(point) not in mounts


async def test_set_guest_date_time_rejects_nonsense(agent):
    # Only the refusal is tested: a real SetGuestDateTime would set the host's clock.
    with pytest.raises(TTRPCError) as caught:
        await agent.agent.SetGuestDateTime(agent_pb2.SetGuestDateTimeRequest(Sec=1, Usec=2_000_000))
    assert code_of(caught) == Code.INVALID_ARGUMENT


async def test_copy_file_into_the_run_dir_only(agent):
    target = agent.run_dir / "files" / "hosts"
    for offset, piece in ((0, b"198.18.0.2 "), (11, b"pod\n")):
        await agent.agent.CopyFile(
            agent_pb2.CopyFileRequest(
                path=str(target), file_size=15, file_mode=0o100644, dir_mode=0o755,
                offset=offset, data=piece,
            )
        )  # fmt: skip
    assert target.read_bytes() == b"198.18.0.2 pod\n"
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"
    for outside in ("/etc/evil", f"{agent.run_dir}/../evil"):
        with pytest.raises(TTRPCError) as caught:
            await agent.agent.CopyFile(
                agent_pb2.CopyFileRequest(path=outside, file_size=1, data=b"x")
            )
        assert code_of(caught) == Code.INVALID_ARGUMENT
    import shutil

    shutil.rmtree(agent.run_dir / "files")


async def test_destroy_sandbox_removes_every_container(sandbox):
    await sandbox.create("d1", ["sleep", "1000"])
    await sandbox.create("d2", ["sleep", "1000"], start=False)
    await sandbox.exec("d1", "e", ["sleep", "1000"])
    await sandbox.agent.DestroySandbox(agent_pb2.DestroySandboxRequest())
    assert sandbox.runc_list() == []
    assert sandbox.leftover_cgroups() == []
    # the agent (not PID 1, --no-poweroff) keeps running and can host a new sandbox
    assert (await sandbox.health.Check(health_pb2.CheckRequest())).status == 1
    await sandbox.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(sandbox_id="again"))
