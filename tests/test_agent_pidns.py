"""The pod's pid namespace in the agent: its own pause process (CreateSandbox with
sandbox_pidns: the Sandbox API door), or the pause container (the pause door); either
way never the namespace the agent lives in, which no container sees or signals.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from agent_support import RUNTIMES, Agent, requires_agent_host, running_agent, spec

from protos.kata import agent_pb2, oci_pb2
from ttrpc import Code, TTRPCError

pytestmark = [requires_agent_host, pytest.mark.timeout(120)]

NOBODY = 65534
# one line per process of the container's pid namespace: "<pid> <comm> <cmdline>"
LIST_PROCESSES = (
    'for d in /proc/[0-9]*; do [ -e "$d/comm" ] && '
    'echo "${d#/proc/} $(cat $d/comm) $(tr "\\0" " " < $d/cmdline)"; done'
)


@pytest.fixture(params=RUNTIMES)
async def agent(request, tmp_path):
    async with running_agent(tmp_path, request.param) as running:
        yield running


async def create(
    agent: Agent,
    cid: str,
    args: list[str],
    *,
    sandbox_pidns: bool = False,
    pid_namespace: str | None = "",
) -> None:
    """CreateContainer + StartContainer; pid_namespace: the spec's pid namespace path
    ("" a new one, None none at all). The process may signal others (CAP_KILL, which
    CRI's default capabilities have)."""
    agent.rootfs(cid)
    oci = spec(args)
    kill = ["CAP_KILL"]
    oci.Process.Capabilities.CopyFrom(
        oci_pb2.LinuxCapabilities(Bounding=kill, Effective=kill, Permitted=kill)
    )
    namespaces = [ns for ns in oci.Linux.Namespaces if ns.Type != "pid"]
    if pid_namespace is not None:
        namespaces.append(oci_pb2.LinuxNamespace(Type="pid", Path=pid_namespace))
    del oci.Linux.Namespaces[:]
    oci.Linux.Namespaces.extend(namespaces)
    await agent.agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=oci, sandbox_pidns=sandbox_pidns
        )
    )
    await agent.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid))


async def output_of(agent: Agent, cid: str, script: str, **create_args) -> str:
    await create(agent, cid, ["sh", "-c", script], **create_args)
    out = (await agent.read_all(cid)).decode()
    assert await agent.wait(cid) == 0, out
    return out


def processes(listing: str) -> dict[int, tuple[str, str]]:
    """LIST_PROCESSES' output: pid -> (comm, cmdline)."""
    found = {}
    for line in listing.splitlines():
        pid, comm, *args = line.split(" ")
        found[int(pid)] = (comm, " ".join(args).strip())
    return found


def pause_pids(agent: Agent) -> list[int]:
    """The agent's pause processes (their command line names the agent's run dir)."""
    root = str(agent.run_dir / ".pause-root")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if root in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def only_the_pods(listed: dict[int, tuple[str, str]], pid1: str) -> bool:
    """Every process listed is PID 1 or one of the test's busybox commands (and their
    subshells): no agent, no kernel thread, nothing else of the machine."""
    for pid, (comm, cmdline) in listed.items():
        if pid == 1:
            assert pid1 in cmdline, listed
        else:
            assert comm in ("sh", "sleep", "cat", "tr", "readlink"), (pid, comm, cmdline)
        assert "-m agent" not in cmdline, listed
    return True


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def gone(pid: int) -> bool:
    """pid has exited (a zombie, or reaped)."""
    try:
        return status(pid)["State"].startswith(("Z", "X"))
    except OSError:
        return True


def pid_ns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


async def test_the_pod_pid_namespace_is_the_agents_own_and_hides_the_agent(agent):
    await agent.agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(sandbox_id="sb", sandbox_pidns=True)
    )
    [pause] = pause_pids(agent)
    await create(agent, "first", ["sleep", "1000"], sandbox_pidns=True, pid_namespace="/x")
    script = (
        f"{LIST_PROCESSES}; echo ns $(readlink /proc/self/ns/pid); "
        f"kill -0 {agent.pid} 2>/dev/null && echo agent-signalled; "
        "kill -0 1 && echo pid1-reachable; "
        "kill -TERM 1; kill -INT 1; kill -HUP 1; kill -KILL 1; "
        "kill -0 1 && echo pid1-alive"
    )
    out = await output_of(agent, "second", script, sandbox_pidns=True)
    lines = out.splitlines()
    listed = processes("\n".join(line for line in lines if line[:1].isdigit()))
    # PID 1 is the agent's pause process; the containers see each other, nothing else
    assert "pause.py" in listed[1][1], listed
    assert any(cmd == "sleep 1000" for _, cmd in listed.values()), listed
    assert only_the_pods(listed, pid1="pause.py")
    assert f"ns {pid_ns(pause)}" in lines and pid_ns(pause) != pid_ns(agent.pid)
    assert "agent-signalled" not in lines
    assert [x for x in lines if x.startswith("pid1")] == ["pid1-reachable", "pid1-alive"]
    assert pause_pids(agent) == [pause]  # TERM, INT, HUP, KILL from the pod: all ignored

    # the pause process holds nothing: nobody, no capabilities, chrooted, not dumpable
    fields = status(pause)
    assert fields["Uid"].split() == [str(NOBODY)] * 4
    assert fields["Gid"].split() == [str(NOBODY)] * 4
    assert int(fields["CapPrm"], 16) == int(fields["CapEff"], 16) == 0
    assert fields["NSpid"].split() == [str(pause), "1"]
    ignored = int(fields["SigIgn"], 16)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
        assert ignored & (1 << (sig - 1)), sig
    assert os.readlink(f"/proc/{pause}/root") == str(agent.run_dir / ".pause-root")
    assert os.stat(f"/proc/{pause}/environ").st_uid == 0  # non-dumpable: root owns its files

    # a container of this pod that did not ask for it has its own (CRI: pid CONTAINER)
    out = await output_of(agent, "third", "cat /proc/1/cmdline; echo; readlink /proc/self/ns/pid")
    cmdline, namespace = out.splitlines()
    assert cmdline.startswith("sh\0-c\0cat /proc/1/cmdline") and namespace != pid_ns(pause)

    await agent.agent.DestroySandbox(agent_pb2.DestroySandboxRequest())
    assert not Path(f"/proc/{pause}").exists()  # killed and reaped
    assert not (agent.run_dir / ".pause-root").exists()


async def test_the_pause_process_exits_and_the_pod_namespace_is_gone(agent):
    await agent.agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(sandbox_id="sb", sandbox_pidns=True)
    )
    [pause] = pause_pids(agent)
    await create(agent, "first", ["sleep", "1000"], sandbox_pidns=True)
    os.kill(pause, signal.SIGKILL)  # from outside the pod (an OOM kill, say)
    assert await agent.wait("first") == 128 + signal.SIGKILL  # the namespace went with it
    for _ in range(500):  # until the agent has reaped it
        if not Path(f"/proc/{pause}").exists():
            break
        await asyncio.sleep(0.02)
    with pytest.raises(TTRPCError) as caught:
        await create(agent, "second", ["true"], sandbox_pidns=True)
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert "pid namespace is gone" in caught.value.message


async def test_the_pause_container_holds_the_pod_namespace_when_one_comes(agent):
    """The pause door: CreateSandbox without sandbox_pidns, the first container asking
    for it holds it; even a pause spec without a pid namespace (hostPID) gets a new one."""
    await agent.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(sandbox_id="sb"))
    assert pause_pids(agent) == []
    await create(agent, "pause", ["sleep", "1000"], sandbox_pidns=True, pid_namespace=None)
    out = await output_of(
        agent,
        "app",
        f"{LIST_PROCESSES}; readlink /proc/self/ns/pid",
        sandbox_pidns=True,
        pid_namespace="/proc/1/ns/pid",
    )
    lines = out.splitlines()
    listed = processes("\n".join(line for line in lines if line[:1].isdigit()))
    assert listed[1][1] == "sleep 1000", listed
    assert only_the_pods(listed, pid1="sleep 1000")
    assert lines[-1] != pid_ns(agent.pid)


@pytest.mark.parametrize("pid_namespace", [None, "/proc/1/ns/pid"], ids=["none", "by-path"])
async def test_a_container_on_its_own_never_gets_the_agents_namespace(agent, pid_namespace):
    """No pod namespace asked for: a new one, whatever the spec says (none at all, or a
    path, which in the guest would name the agent's)."""
    await agent.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(sandbox_id="sb"))
    out = await output_of(
        agent,
        "alone",
        "cat /proc/1/cmdline; echo; readlink /proc/self/ns/pid",
        pid_namespace=pid_namespace,
    )
    cmdline, namespace = out.splitlines()
    assert cmdline.startswith("sh\0-c\0cat /proc/1/cmdline"), cmdline
    assert namespace != pid_ns(agent.pid)


async def test_the_pause_process_dies_with_the_agent(agent):
    await agent.agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(sandbox_id="sb", sandbox_pidns=True)
    )
    await create(agent, "first", ["true"], sandbox_pidns=True)  # it is ready: joined once
    assert await agent.wait("first") == 0
    [pause] = pause_pids(agent)
    agent.process.kill()
    agent.process.wait()
    for _ in range(500):  # until the kernel has killed it (its zombie is no one's to reap)
        if gone(pause):
            break
        await asyncio.sleep(0.02)
    assert gone(pause)
    agent.sweep()
    for left in ("first", ".pause-root"):
        shutil.rmtree(agent.run_dir / left, ignore_errors=True)
