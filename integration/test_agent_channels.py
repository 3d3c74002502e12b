"""The agent's channels end to end: a pod whose agent is reached over hybrid vsock
(vhost-user-vsock-pci + vhost-device-vsock: the guest's AF_VSOCK listener on port 1024,
the kernel's virtio-vsock, the shim's `CONNECT 1024` dialer) and one over virtio-serial,
each forced by `[hypervisor.qemu] agent_transport`, under ctr and CRI (containerd 1.6).
Whatever `auto` picks on the host, both channels run here.

The proof that the agent answered on AF_VSOCK: the VM has no virtio-serial agent port
at all (QEMU's command line), the shim's address is `hvsock://`, and the agent logged
`listening on vsock://1024` on the guest console.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from integration.pykata_env import (
    RUNTIME,
    STATE_ROOT,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from shim.vmm import procs
from shim.vmm.vm_config import DEFAULT_VHOST_VSOCK

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def assets():
    ensure_shim_on_path()
    ensure_guest_assets()  # installs vhost-device-vsock too
    assert os.access(DEFAULT_VHOST_VSOCK, os.X_OK), DEFAULT_VHOST_VSOCK


def transport_config(path: Path, transport: str) -> Path:
    path.write_text(f'[hypervisor.qemu]\nagent_transport = "{transport}"\n')
    return path


def assert_channel(state: Path, transport: str) -> None:
    """The running pod's VM reaches its agent over `transport`, and only over it."""
    record = json.loads((state / "vm.json").read_text())
    address = record["agent"]["address"]
    qemu_argv = " ".join(procs.cmdline(record["processes"]["qemu"]["pid"]))
    listening = "listening on vsock://1024" if transport == "hvsock" else "listening on serial://"
    deadline = time.monotonic() + 30  # the console log may lag the agent's answer
    while listening not in (console := (state / "console.log").read_text(errors="replace")):
        assert time.monotonic() < deadline, console[-3000:]
        time.sleep(0.5)
    if transport == "hvsock":
        assert address == f"hvsock://{state}/hvsock.sock:1024"
        assert "vhost-user-vsock-pci" in qemu_argv and "agent.channel.0" not in qemu_argv
        daemon = record["processes"]["vhost-vsock"]
        assert procs.is_running(daemon["pid"], daemon["start_time"])
        assert f"--uds-path={state}/hvsock.sock" in procs.cmdline(daemon["pid"])
        status = Path(f"/proc/{daemon['pid']}/status").read_text()
        assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    else:
        assert address == f"unix://{state}/agent.sock"
        assert "name=agent.channel.0" in qemu_argv and "vhost-user-vsock" not in qemu_argv
        assert "vhost-vsock" not in record["processes"]


@pytest.mark.parametrize("transport", ["hvsock", "serial"])
def test_ctr_run_with_the_agent_over(transport, containerd, busybox_image, tmp_path):
    cd = containerd
    config = transport_config(tmp_path / "configuration.toml", transport)
    cid = f"ch-{transport}-{uuid.uuid4().hex[:6]}"
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, "--runtime-config-path", str(config),
                    busybox_image, cid, "sleep", "600", timeout=300)
    assert result.returncode == 0, result.stderr + cd.log_tail()
    try:
        assert_channel(STATE_ROOT / cd.namespace / cid, transport)
        got = cd.ctr("task", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo via-$0", transport,
                     timeout=120)
        assert (got.returncode, got.stdout) == (0, f"via-{transport}\n"), got.stderr
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        cd.ctr("task", "rm", "-f", cid, timeout=120)
        cd.ctr("container", "rm", cid)
    assert_nothing_left()  # the daemon too: its argv names the state directory


def test_a_cri_pod_with_the_agent_over_hybrid_vsock(tmp_path):
    from integration.cri_env import CriClient, CriNode, busybox_container, pod_sandbox_config
    from integration.test_cri import assert_pod_gone, exec_sync

    config = transport_config(tmp_path / "configuration.toml", "hvsock")
    with CriNode(runtime_options={"ConfigPath": str(config)}) as node, \
            CriClient(node.address) as cri:
        pod_config = pod_sandbox_config(cri.api, node, "hvsock")
        pod_id = cri.run_pod(pod_config)
        try:
            assert_channel(STATE_ROOT / "k8s.io" / pod_id, "hvsock")
            cid = cri.start_container(pod_id, pod_config, busybox_container(cri.api, "one"))
            assert exec_sync(cri, cid, "echo", "over-hvsock") == (0, "over-hvsock\n", "")
        finally:
            cri.remove_pod(pod_id)
        assert_pod_gone(node, pod_id)
        assert not (STATE_ROOT / "k8s.io" / pod_id).exists()


async def test_dials_given_up_on_leave_the_hybrid_vsock_daemon_serving(tmp_path):
    """vhost-device-vsock 0.3 loses its one worker thread when its `OK` meets a socket
    the dialer closed (and then never answers that VM again): a dial the shim gives up
    on after its CONNECT is closed only once answered (hybrid_vsock.abandon), and the
    daemon goes on serving."""
    from shim import hybrid_vsock
    from shim.vmm import VMConfig, start_vm

    state, shared = tmp_path / "state", tmp_path / "shared"
    shared.mkdir()
    config = VMConfig(memory_mib=512, agent_transport="hvsock",
                      vhost_vsock_daemon=DEFAULT_VHOST_VSOCK)
    vm = await start_vm(config, state, shared)
    try:
        uds = str(state / "hvsock.sock")
        for _ in range(3):  # what connect() does with a dial that timed out or was cancelled
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(uds)
            sock.sendall(b"CONNECT 1024\n")
            sock.setblocking(False)
            hybrid_vsock.abandon(sock, 1024)
        deadline = time.monotonic() + 60
        while hybrid_vsock.abandoned():
            assert time.monotonic() < deadline, "the guest never answered the CONNECTs"
            await asyncio.sleep(0.05)
        sock = await hybrid_vsock.connect(uds, 1024, timeout=30)  # answered: still serving
        sock.close()
        assert (await vm.agent.check()).status == 1
        assert "panicked" not in (state / "vhost-vsock.log").read_text(errors="replace")
    finally:
        await vm.stop()
