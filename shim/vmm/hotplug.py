"""What a clone of a template gets after its restore, as QMP steps: the shared
filesystem and the NICs, each into a free root port of the template's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykata_common.contract import SHARED_FS_TAG
from shim.vmm.qemu_args import SHARED_FS_PORT, nic_properties
from shim.vmm.vm_config import NicSpec


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
    """netdev_add (tap by fd, fds or name) and device_add virtio-net-pci for one NIC,
    into the root port after the shared filesystem's."""
    netdev, device, fds = nic_properties(index, nic, fd_names=True)
    device["bus"] = f"rp{index + 1}"
    return [Step("netdev_add", netdev, fds), Step("device_add", device)]


def clone_steps(virtiofsd_socket: Path | None, nics: list[NicSpec]) -> list[Step]:
    """Every hot-plug a clone needs, shared filesystem first."""
    steps = shared_fs_steps(virtiofsd_socket) if virtiofsd_socket is not None else []
    for i, nic in enumerate(nics):
        steps += nic_steps(i, nic)
    return steps
