"""The agent inside a real VM, driven over ttrpc without containerd (issue 3's proof).

Boots the built kernel + initrd under QEMU (TCG here), virtiofsd shares a
folder holding a busybox rootfs under the `kataShared` tag, the agent listens
on the virtio-serial port whose host end is a Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
from pathlib import Path

import pytest

import ttrpc
from integration.agent_stubs import AgentStub
from integration.test_vmm_boot import dirs, guest_image, leftovers  # noqa: F401  (fixtures)
from protos.kata import agent_pb2, oci_pb2
from pykata_common.contract import GUEST_SHARED_DIR, SHARED_FS_TAG
from shim.vmm import VMConfig, start_vm

pytestmark = pytest.mark.integration
CID = "agent-vm-test"


def busybox_rootfs(root: Path) -> None:
    """A minimal rootfs: busybox-static and its applet links."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2("/bin/busybox", bin_dir / "busybox")
    for applet in ("sh", "cat", "uname", "sleep", "echo", "id"):
        os.symlink("busybox", bin_dir / applet)
    for folder in ("proc", "sys", "dev", "tmp", "etc"):
        (root / folder).mkdir()


def spec(args: list[str]) -> oci_pb2.Spec:
    process = oci_pb2.Process(
        Args=args, Env=["PATH=/bin"], Cwd="/", User=oci_pb2.User(UID=0, GID=0)
    )
    mounts = [
        oci_pb2.Mount(destination="/proc", type="proc", source="proc"),
        oci_pb2.Mount(
            destination="/dev",
            type="tmpfs",
            source="tmpfs",
            options=["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
    ]
    namespaces = [oci_pb2.LinuxNamespace(Type=t) for t in ("pid", "mount", "ipc", "uts")]
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=process,
        Hostname="agent-vm",
        Root=oci_pb2.Root(Path=f"{GUEST_SHARED_DIR}/{CID}/rootfs"),
        Mounts=mounts,
        Linux=oci_pb2.Linux(Namespaces=namespaces),
    )


async def read_all(agent, method: str, exec_id: str) -> bytes:
    data = b""
    call = getattr(agent, method)
    while True:
        try:
            answer = await call(
                agent_pb2.ReadStreamRequest(container_id=CID, exec_id=exec_id, len=65536),
                timeout=60,
            )
        except ttrpc.TTRPCError as exc:
            assert exc.code == ttrpc.Code.OUT_OF_RANGE  # the agent's end of stream
            return data
        data += answer.data


async def test_agent_runs_a_container_in_the_vm(guest_image, dirs):  # noqa: F811
    state, shared = dirs
    busybox_rootfs(shared / CID / "rootfs")
    vm = await start_vm(VMConfig(accel="auto", memory_mib=512), state, shared)
    try:
        agent = AgentStub(vm.agent)
        assert (await vm.agent.check()).status == 1
        await agent.CreateSandbox(
            agent_pb2.CreateSandboxRequest(
                hostname="agent-vm",
                sandbox_id=CID,
                storages=[
                    agent_pb2.Storage(
                        driver="virtio-fs",
                        source=SHARED_FS_TAG,
                        fstype="virtiofs",
                        mount_point=GUEST_SHARED_DIR,
                    )
                ],
            ),
            timeout=60,
        )
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=CID,
                exec_id=CID,
                OCI=spec(["sh", "-c", "uname -r; echo err >&2; cat; exit 3"]),
            ),
            timeout=120,
        )
        await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=CID), timeout=60)
        stdout = asyncio.ensure_future(read_all(agent, "ReadStdout", CID))
        stderr = asyncio.ensure_future(read_all(agent, "ReadStderr", CID))
        await agent.WriteStdin(
            agent_pb2.WriteStreamRequest(container_id=CID, exec_id=CID, data=b"fed via stdin\n"),
            timeout=30,
        )
        await agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id=CID, exec_id=CID))
        waited = await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=CID, exec_id=CID), timeout=120
        )
        assert waited.status == 3
        out_lines = (await stdout).decode().splitlines()
        assert out_lines[1:] == ["fed via stdin"]
        assert out_lines[0] != platform.release()  # the guest's kernel, not the host's
        built = json.loads((guest_image / "manifest.json").read_text())["kernel"]["release"]
        assert out_lines[0] == built  # the kernel the image was built with
        assert (await stderr) == b"err\n"

        # a second container whose init sleeps: exec into it, then kill a sleep
        second = "agent-vm-test2"
        shutil.copytree(shared / CID / "rootfs", shared / second / "rootfs", symlinks=True)
        sleeper = spec(["sleep", "600"])
        sleeper.Root.Path = f"{GUEST_SHARED_DIR}/{second}/rootfs"
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(container_id=second, exec_id=second, OCI=sleeper),
            timeout=120,
        )
        await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=second), timeout=60)
        await agent.ExecProcess(
            agent_pb2.ExecProcessRequest(
                container_id=second,
                exec_id="e1",
                process=oci_pb2.Process(Args=["sh", "-c", "exit 4"], Env=["PATH=/bin"], Cwd="/"),
            ),
            timeout=60,
        )
        exec_wait = await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=second, exec_id="e1"), timeout=60
        )
        assert exec_wait.status == 4
        await agent.SignalProcess(
            agent_pb2.SignalProcessRequest(container_id=second, exec_id=second, signal=9),
            timeout=30,
        )
        killed = await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=second, exec_id=second), timeout=60
        )
        assert killed.status == 137

        await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=60)
        assert await asyncio.wait_for(vm.wait_exited(), 60) == 0  # QEMU exits by itself
    finally:
        await vm.stop()
