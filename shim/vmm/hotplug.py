"""What a clone of a template gets after its restore, as QMP steps: the shared
filesystem and the NICs, each into a free root port of the template's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.vmm.config import SHARED_FS_TAG, NicSpec
from shim.vmm.qemu_args import HOTPLUG_PORTS, SHARED_FS_PORT


@dataclass
class Step:
    """One QMP command; `fds` are (name, fd) pairs handed over with `getfd` before it."""

    command: str
    arguments: dict[str, Any]
    fds: list[tuple[str, int]] = field(default_factory=list)


def shared_fs_steps(virtiofsd_socket: Path) -> list[Step]:
    """chardev-add for virtiofsd's socket, then the vhost-user-fs device."""
    address = {"type": "unix", "data": {"path": str(virtiofsd_socket)}}
    backend = {"type": "socket", "data": {"addr": address, "server": False}}
    return [
        Step("chardev-add", {"id": "vfs0", "backend": backend}),
        Step(
            "device_add",
            {
                "driver": "vhost-user-fs-pci",
                "chardev": "vfs0",
                "tag": SHARED_FS_TAG,
                "id": "fs0",
                "bus": SHARED_FS_PORT,
            },
        ),
    ]


def nic_steps(index: int, nic: NicSpec) -> list[Step]:
    """netdev_add (tap by fd, fds or name) and device_add virtio-net-pci for one NIC."""
    ident = nic.id or f"net{index}"
    if (nic.tap_fd is not None) + bool(nic.tap_fds) + (nic.ifname is not None) != 1:
        raise ValueError(f"NIC {ident}: give exactly one of tap_fd, tap_fds and ifname")
    netdev: dict[str, Any] = {"type": "tap", "id": ident}
    fds: list[tuple[str, int]] = []
    if nic.tap_fd is not None:
        queues = 1
        fds = [(f"{ident}-q0", nic.tap_fd)]
        netdev["fd"] = fds[0][0]
    elif nic.tap_fds:
        queues = len(nic.tap_fds)
        fds = [(f"{ident}-q{i}", fd) for i, fd in enumerate(nic.tap_fds)]
        netdev["fds"] = ":".join(name for name, _ in fds)
    else:
        queues = max(1, nic.queues)
        netdev.update(ifname=nic.ifname, script="no", downscript="no")
        if queues > 1:
            netdev["queues"] = queues
    if nic.vhost:
        netdev["vhost"] = True
    device: dict[str, Any] = {
        "driver": "virtio-net-pci",
        "netdev": ident,
        "mac": nic.mac,
        "id": f"dev-{ident}",
        "romfile": "",
        "bus": f"rp{index + 1}",
    }
    if queues > 1:
        device.update(mq=True, vectors=2 * queues + 2)
    if nic.mtu:
        device["host_mtu"] = nic.mtu
    return [Step("netdev_add", netdev, fds), Step("device_add", device)]


def free_ports_for(nics: list[NicSpec]) -> bool:
    """Whether the template's root ports hold the shared filesystem and these NICs."""
    return len(nics) + 1 <= HOTPLUG_PORTS


def clone_steps(virtiofsd_socket: Path | None, nics: list[NicSpec]) -> list[Step]:
    """Every hot-plug a clone needs, shared filesystem first."""
    steps = shared_fs_steps(virtiofsd_socket) if virtiofsd_socket is not None else []
    for i, nic in enumerate(nics):
        steps += nic_steps(i, nic)
    return steps
