"""start_vm with the real QEMU, the real guest image and the real agent (TCG here).

Fails (never skips) when QEMU, the image builder or virtiofsd are missing: the
image is built once per session with `python3 -m guest build` into the default
directory (a no-op when it is up to date).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from integration.agent_stubs import AgentStub  # noqa: E402
from protos.kata import agent_pb2  # noqa: E402
from shim.vmm import (  # noqa: E402
    AgentTimeoutError,
    NicSpec,
    QemuExitedError,
    VMConfig,
    start_vm,
)
from shim.vmm.vm_config import DEFAULT_ASSETS, DEFAULT_VIRTIOFSD  # noqa: E402

pytestmark = pytest.mark.integration
QEMU = "qemu-system-x86_64"


def _run(argv: list[str], what: str, timeout: float = 900) -> None:
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        pytest.fail(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The default guest image, built (or found up to date) once per session."""
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} not found: apt-get install qemu-system-x86")
    if os.geteuid() != 0:
        pytest.fail("needs root (virtiofsd, netns, taps)")
    _run([sys.executable, "-m", "guest", "build"], "python3 -m guest build")
    if not os.access(DEFAULT_VIRTIOFSD, os.X_OK):
        _run([sys.executable, "-m", "guest", "host-virtiofsd"], "python3 -m guest host-virtiofsd")
    for name in ("vmlinuz", "pykata-initrd.img"):
        if not (DEFAULT_ASSETS / name).exists():
            pytest.fail(f"{DEFAULT_ASSETS / name} missing after the build")
    return DEFAULT_ASSETS


@pytest.fixture
def dirs(tmp_path) -> Iterator[tuple[Path, Path]]:
    """(state dir, shared dir); asserts at the end that nothing of the VM is left."""
    state, shared = tmp_path / "state", tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    yield state, shared
    assert leftovers(state) == []


def processes_naming(path: Path) -> list[str]:
    """Processes whose argv mentions `path` (a QEMU or virtiofsd of that VM)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(path) in argv and pid != str(os.getpid()):
            found.append(f"{pid}: {argv.replace(chr(0), ' ')[:200]}")
    return found


def leftovers(state: Path) -> list[str]:
    files = [p.name for p in state.iterdir()] if state.exists() else []
    return processes_naming(state) + [f for f in files if f.endswith((".sock", ".pid", ".json"))]


async def test_boot_check_details_stop(guest_image, dirs):
    state, shared = dirs
    t0 = time.monotonic()
    vm = await start_vm(VMConfig(accel="auto", memory_mib=1024), state, shared)
    try:
        booted = time.monotonic() - t0
        assert vm.accel.accel in ("kvm", "tcg")
        assert (await vm.agent.check()).status == 1  # SERVING
        details = await AgentStub(vm.agent).GetGuestDetails(
            agent_pb2.GuestDetailsRequest(mem_block_size=True))
        assert details.agent_details.version
        assert "virtio-fs" in details.agent_details.storage_handlers
        assert vm.virtiofsd is not None and vm.virtiofsd.returncode is None
        assert (state / "vm.json").exists() and (state / "qemu.pid").exists()
        print(f"booted in {booted:.2f}s ({vm.accel.accel}): {vm.timings}")
    finally:
        await vm.stop()
    assert await vm.wait_exited() == 0
    assert vm.virtiofsd.returncode is not None
    assert vm.console_log.exists()


async def test_destroy_sandbox_powers_off_then_stop_cleans_up(guest_image, dirs):
    state, shared = dirs
    vm = await start_vm(VMConfig(debug=True, shared_fs="none"), state, shared)
    try:
        await vm.agent.destroy_sandbox()
        assert await asyncio.wait_for(vm.wait_exited(), 30) == 0  # the guest powered off
    finally:
        await vm.stop()
    console = vm.console_log.read_text(errors="replace")
    assert "pykata-init" in console or "agent" in console  # debug: init and agent logs


async def test_kernel_that_is_not_a_kernel(guest_image, dirs, tmp_path):
    state, shared = dirs
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"this is not a kernel\n" * 100)
    with pytest.raises(QemuExitedError) as err:
        await start_vm(VMConfig(kernel=str(bogus)), state, shared, timeout=30)
    assert err.value.exit_code == 1
    assert "kernel" in err.value.stderr_tail.lower()  # QEMU says why it cannot load it
    assert str(err.value).startswith("QEMU (pid ")


async def test_agent_that_never_starts(guest_image, dirs):
    state, shared = dirs
    # busybox sleep as the initrd's init: the VM runs, nothing opens the agent port
    config = VMConfig(kernel_params=["rdinit=/usr/bin/sleep", "3600"], shared_fs="none")
    t0 = time.monotonic()
    with pytest.raises(AgentTimeoutError) as err:
        await start_vm(config, state, shared, timeout=12)
    assert time.monotonic() - t0 < 25
    assert "did not answer within 12s" in str(err.value)
    assert "never opened the agent port" in str(err.value)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own with a tap in it; deleted afterwards."""
    name = f"pykata-vmm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", "tap0_kata", "mode", "tap"],
                       check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "tap0_kata", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


async def test_qemu_in_the_pod_netns_with_a_tap(guest_image, dirs, netns):
    state, shared = dirs
    mac = "02:00:c6:12:00:02"
    config = VMConfig(netns=f"/var/run/netns/{netns}", shared_fs="none",
                      nics=[NicSpec(mac=mac, ifname="tap0_kata")])
    vm = await start_vm(config, state, shared)
    try:
        assert os.stat(f"/proc/{vm.pid}/ns/net").st_ino == os.stat(
            f"/var/run/netns/{netns}").st_ino
        interfaces = await AgentStub(vm.agent).ListInterfaces(agent_pb2.ListInterfacesRequest())
        assert mac in [i.hwAddr for i in interfaces.Interfaces]
    finally:
        await vm.stop()
