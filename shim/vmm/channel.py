"""Which channel a VM's agent gets: vhost-vsock, hybrid vsock or a virtio-serial port.

`auto` takes vhost-vsock where /dev/vhost-vsock can be opened (production hosts), else
hybrid vsock (QEMU's vhost-user-vsock-pci served by vhost-device-vsock) where that
daemon is installed, else virtio-serial. A VM template and its clones never use hybrid
vsock: QEMU cannot migrate a vhost-user-vsock device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shim.vmm.vm_config import VMConfig
from shim.vmm.vsock import VHOST_VSOCK_DEV

VSOCK, HVSOCK, SERIAL = "vsock", "hvsock", "serial"
# what the transports are called in logs and `pykata-runtime check`
LABELS = {VSOCK: "vsock (vhost-vsock)", HVSOCK: "hybrid vsock (vhost-user-vsock)",
          SERIAL: "virtio-serial"}
NO_MIGRATION = "QEMU cannot migrate a vhost-user-vsock device"


@dataclass(frozen=True)
class Choice:
    """The channel (VSOCK, HVSOCK or SERIAL) and why it was taken."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{LABELS[self.kind]}: {self.reason}"


def vhost_vsock_usable(dev: str = VHOST_VSOCK_DEV) -> bool:
    """Whether this process can open the host side of vhost-vsock."""
    return os.path.exists(dev) and os.access(dev, os.R_OK | os.W_OK)


def daemon_installed(path: str) -> bool:
    """Whether vhost-device-vsock is at `path` and executable."""
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def choose(transport: str, daemon: str, *, templated: bool) -> Choice:
    """The channel for a configured `transport` ("auto", "vsock", "hvsock", "serial"),
    hybrid vsock's `daemon` path, and whether the VM is (or is restored from) a template."""
    if transport == SERIAL:
        return Choice(SERIAL, "configured")
    if transport == VSOCK:
        return Choice(VSOCK, "configured")
    if transport == HVSOCK:
        if templated:
            return Choice(SERIAL, f"hvsock configured, but VM templates are on and {NO_MIGRATION}")
        return Choice(HVSOCK, "configured")
    if transport != "auto":
        raise ValueError(f"unknown agent transport {transport!r}")
    if vhost_vsock_usable():
        return Choice(VSOCK, f"{VHOST_VSOCK_DEV} is usable")
    if templated:
        return Choice(SERIAL, f"no usable {VHOST_VSOCK_DEV}, and VM templates are on: "
                              f"{NO_MIGRATION}")
    if daemon_installed(daemon):
        return Choice(HVSOCK, f"no usable {VHOST_VSOCK_DEV}; vhost-device-vsock at {daemon}")
    return Choice(SERIAL, f"no usable {VHOST_VSOCK_DEV}, and no vhost-device-vsock at "
                          f"{daemon or '(vhost_user_vsock_daemon is empty)'}")


def for_config(config: VMConfig, *, templated: bool | None = None) -> Choice:
    """The channel of a VM; `templated` defaults to whether its config names a VM
    template (its pods are clones, or boot in the template's shape)."""
    if templated is None:
        templated = config.template_path is not None
    return choose(config.agent_transport, config.vhost_vsock_daemon, templated=templated)
