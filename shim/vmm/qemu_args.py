"""The QEMU command line of a sandbox VM: a pure function of the config and state paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykata_common.contract import (
    AGENT_PORT_NAME,
    DEBUG_CONSOLE_PARAM,
    DEBUG_CONSOLE_PORT_NAME,
    SHARED_FS_TAG,
)
from shim.vmm.channel import NO_MIGRATION
from shim.vmm.layout import VMPaths
from shim.vmm.vm_config import NicSpec, VMConfig

AGENT_PORT_ID = "channel0"  # QMP VSERPORT_CHANGE names the port by this id
VSOCK_DEVICE_ID = "vsock0"
DEBUG_CONSOLE_PORT_ID = "dbgcon0"
# Legacy devices a sandbox never uses; leaving them out saves probing time in the guest.
MACHINE_TRIMS = ("sata=off", "smbus=off", "vmport=off")
# Kata's kernel_params minus what our guest does not have; each saves boot time.
FAST_BOOT_PARAMS = (
    "tsc=reliable",
    "no_timer_check",
    "rcupdate.rcu_expedited=1",
    "i8042.direct=1",
    "i8042.dumbkbd=1",
    "i8042.nopnp=1",
    "i8042.noaux=1",
    "noreplace-smp",
    "reboot=k",
    "cryptomgr.notests",
    "net.ifnames=0",
    "pci=lastbus=0",
)
# A guest image without a first-stage initrd: the kernel (pmem, ext4 and DAX built in)
# mounts it as the root itself, read-only, its files read in place from the host's page
# cache; rootwait because the pmem namespace is probed asynchronously.
IMAGE_ROOT_PARAMS = (
    "root=/dev/pmem0",
    "rootfstype=ext4",
    "rootflags=dax=always",
    "ro",
    "rootwait",
    "init=/init",
)
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class SerialChannel:
    """Agent over a virtio-serial port; QEMU serves its host end on a Unix socket."""

    socket: Path


@dataclass(frozen=True)
class VsockChannel:
    """Agent over vsock; `vhostfd` is an open /dev/vhost-vsock that already owns `cid`."""

    cid: int
    vhostfd: int | None = None


@dataclass(frozen=True)
class HybridVsockChannel:
    """Agent over vsock through vhost-user-vsock-pci: vhost-device-vsock serves the
    device on `backend` (QEMU connects to it) and the host's door, `uds`, where the
    shim says `CONNECT 1024`. The backend maps guest RAM: it must be shared."""

    backend: Path
    uds: Path


AgentChannel = SerialChannel | VsockChannel | HybridVsockChannel

# PCIe root ports a template VM keeps free: the shared filesystem and the NICs
# are hot-plugged into them after a restore (q35's root bus cannot hot-plug).
HOTPLUG_PORTS = 4
SHARED_FS_PORT = "rp0"


@dataclass(frozen=True)
class TemplateLayout:
    """A VM that is a template or a clone of one: RAM in a named file, free root ports,
    no shared filesystem or NICs on the command line (they are hot-plugged).

    `incoming`: a clone, which waits for its device state (`-incoming defer`)."""

    memory_path: Path
    incoming: bool = False


def q(value: object) -> str:
    """Escape a value for a QEMU option list (a comma is written as two)."""
    return str(value).replace(",", ",,")


HOTPLUG_MEMORY_SLOTS = 8  # DIMMs a VM can be given after boot


def hotplugs_memory(config: VMConfig) -> bool:
    return config.max_memory_mib > config.memory_mib


def memory_arg(config: VMConfig, image_bytes: int = 0) -> str:
    """-m: the boot memory, and room for memory devices (the image, hot-plugged DIMMs)."""
    slots, maxmem = 0, config.memory_mib
    if config.image:
        slots, maxmem = slots + 1, maxmem + -(-image_bytes // 2**20)
    if hotplugs_memory(config):
        slots += HOTPLUG_MEMORY_SLOTS
        maxmem += config.max_memory_mib - config.memory_mib
    if not slots:
        return f"{config.memory_mib}M"
    return f"{config.memory_mib}M,slots={slots},maxmem={maxmem}M"


def smp_arg(config: VMConfig) -> str:
    """-smp: the boot vCPUs, and how many may be hot-plugged."""
    if config.max_vcpus > config.vcpus:
        return f"{config.vcpus},maxcpus={config.max_vcpus}"
    return str(config.vcpus)


def kernel_cmdline(config: VMConfig) -> str:
    """The guest kernel command line: console, panic behaviour, speed-ups, knobs."""
    # oops=panic: a guest kernel that hit a BUG is in no state to go on (a container it
    # was ending may never be reported); the panic ends QEMU and the pod learns why
    params = ["console=ttyS0", "panic=-1", "oops=panic", *FAST_BOOT_PARAMS]
    if config.image or hotplugs_memory(config):
        # the memory-device space (the image's, hot-plugged memory's) lies above 4 GiB,
        # which makes the kernel set 64 MiB aside for bounce buffers (swiotlb) that
        # virtio never uses
        params.append("swiotlb=noforce")
    if config.image and not config.initrd:
        params += list(IMAGE_ROOT_PARAMS)
    if hotplugs_memory(config):
        params.append("memhp_default_state=online")  # hot-plugged memory: online at once
    # pykata.debug=1: /init traces and kernel messages; agent.log=debug: Kata's agent knob
    params += ["pykata.debug=1", "agent.log=debug"] if config.debug else ["quiet"]
    if config.debug_console:
        params.append(DEBUG_CONSOLE_PARAM)
    params += config.kernel_params
    return " ".join(params)


def nic_properties(
    index: int, nic: NicSpec, *, fd_names: bool = False
) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, int]]]:
    """(netdev, device, fds) of one NIC, as QEMU options in order.

    `fd_names`: the taps are referred to by name (a hot-plug hands them over with
    `getfd` first: `fds` pairs each name with its fd); else by fd number (inherited)."""
    ident = nic.id or f"net{index}"
    if (nic.tap_fd is not None) + bool(nic.tap_fds) + (nic.ifname is not None) != 1:
        raise ValueError(f"NIC {ident}: give exactly one of tap_fd, tap_fds and ifname")
    netdev: dict[str, Any] = {"type": "tap", "id": ident}
    taps = [nic.tap_fd] if nic.tap_fd is not None else list(nic.tap_fds)
    fds = [(f"{ident}-q{i}", fd) for i, fd in enumerate(taps)]
    refs = [name if fd_names else str(fd) for name, fd in fds]
    if nic.tap_fd is not None:
        netdev["fd"] = refs[0]
    elif nic.tap_fds:  # multi-queue: one fd per queue
        netdev["fds"] = ":".join(refs)
    else:  # QEMU opens the tap by name (in its netns), `queues` times
        netdev.update(ifname=nic.ifname, script="no", downscript="no")
        if nic.queues > 1:
            netdev["queues"] = nic.queues
    queues = len(taps) or max(1, nic.queues)
    if nic.vhost:
        netdev["vhost"] = True
    device: dict[str, Any] = {
        "driver": "virtio-net-pci",
        "netdev": ident,
        "mac": nic.mac,
        "id": f"dev-{ident}",
        "romfile": "",
    }
    if queues > 1:
        device.update(mq=True, vectors=2 * queues + 2)
    if nic.mtu:
        device["host_mtu"] = nic.mtu
    return netdev, device, fds if fd_names else []


def option_list(first: str, options: dict[str, Any]) -> str:
    """`first,key=value,...` for the command line (booleans as on/off, commas escaped)."""
    parts = [first]
    for key, value in options.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{key}={q(value)}")
    return ",".join(parts)


def _nic_args(index: int, nic: NicSpec) -> list[str]:
    netdev, device, _ = nic_properties(index, nic)
    netdev_type = netdev.pop("type")
    driver = device.pop("driver")
    return ["-netdev", option_list(netdev_type, netdev), "-device", option_list(driver, device)]


def accel_arg(config: VMConfig, accel: str) -> str:
    """-accel: KVM, or TCG with its translation cache capped where configured (QEMU's
    default cache is sized for the host, and a VM's vCPUs fill tens of MiB of it)."""
    if accel == "tcg" and config.tcg_cache_mib > 0:
        return f"tcg,tb-size={config.tcg_cache_mib}"
    return accel


def build_argv(
    config: VMConfig,
    paths: VMPaths,
    *,
    accel: str,
    cpu: str,
    channel: AgentChannel,
    seccomp: bool = True,
    name: str | None = None,
    firmware: str | None = None,
    start_paused: bool = True,
    layout: TemplateLayout | None = None,
    image_bytes: int = 0,
) -> list[str]:
    """argv for QEMU (argv[0] = config.qemu_path).

    `firmware` is a resolved -bios path (None: QEMU's default). `start_paused`
    adds -S: the caller subscribes to QMP events, then sends `cont`, so the agent
    port's open event cannot be missed.
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg here, not {accel!r}")
    if config.image and image_bytes <= 0:
        raise ValueError("a guest image needs its size (image_bytes)")
    mem = f"{config.memory_mib}M"
    memory = memory_arg(config, image_bytes)
    machine = ",".join([config.machine_type, *MACHINE_TRIMS])
    argv = [
        config.qemu_path,
        "-name",
        q(name or f"pykata-{paths.state_dir.name}"),
        "-machine",
        machine,
        "-accel",
        accel_arg(config, accel),
        "-cpu",
        cpu,  # a model plus comma-separated features: not escaped
        "-m",
        memory,
        "-smp",
        smp_arg(config),
        "-nodefaults",
        "-nographic",
        "-no-user-config",
        "-no-reboot",
        "-qmp",
        f"unix:{q(paths.qmp_socket)},server=on,wait=off",
        "-pidfile",
        str(paths.qemu_pidfile),
        "-kernel",
        config.kernel,
        "-append",
        kernel_cmdline(config),
    ]
    if config.initrd:
        argv += ["-initrd", config.initrd]
    if firmware:
        argv += ["-bios", firmware]
    if start_paused:
        argv.append("-S")
    if seccomp:
        argv += ["-sandbox", SECCOMP]
    # guest console: the first serial port, served on a socket and always logged; the
    # log is opened O_APPEND so the shim can trim it under QEMU (shim.vmm.console_log)
    argv += [
        "-chardev",
        f"socket,id=console0,path={q(paths.console_socket)},server=on,"
        f"wait=off,logfile={q(paths.console_log)},logappend=on",
        "-serial",
        "chardev:console0",
    ]
    if layout is not None:
        if config.shared_fs not in ("virtio-fs", "none"):
            raise ValueError(f"shared_fs must be virtio-fs or none, not {config.shared_fs!r}")
        # share=on: virtiofsd maps the clone's RAM, and the template's pages are saved
        # in the file itself (x-ignore-shared keeps them out of the device state)
        argv += [
            "-object",
            f"memory-backend-file,id=mem0,size={mem},mem-path={q(layout.memory_path)},share=on",
            "-numa",
            "node,memdev=mem0",
        ]
        for i in range(HOTPLUG_PORTS):
            argv += ["-device", f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i + 1},slot={i + 1}"]
    elif config.shared_fs not in ("virtio-fs", "none"):
        raise ValueError(f"shared_fs must be virtio-fs or none, not {config.shared_fs!r}")
    else:
        if config.shared_fs == "virtio-fs" or isinstance(channel, HybridVsockChannel):
            # vhost-user backends (virtiofsd, vhost-device-vsock) map the guest's RAM
            argv += [
                "-object",
                f"memory-backend-memfd,id=mem0,size={mem},share=on",
                "-numa",
                "node,memdev=mem0",
            ]
        if config.shared_fs == "virtio-fs":
            argv += [
                "-chardev",
                f"socket,id=vfs0,path={q(paths.virtiofsd_socket)}",
                "-device",
                f"vhost-user-fs-pci,chardev=vfs0,tag={SHARED_FS_TAG},id=fs0",
            ]
    if isinstance(channel, VsockChannel):
        dev = f"vhost-vsock-pci,id={VSOCK_DEVICE_ID},guest-cid={channel.cid}"
        if channel.vhostfd is not None:
            dev += f",vhostfd={channel.vhostfd}"
        argv += ["-device", dev]
    if isinstance(channel, HybridVsockChannel):
        if layout is not None:
            raise ValueError(f"a VM template cannot have hybrid vsock: {NO_MIGRATION}")
        # the guest's CID is the daemon's --guest-cid (the device reads it from there)
        argv += [
            "-chardev",
            f"socket,id=vsock0,path={q(channel.backend)}",
            "-device",
            f"vhost-user-vsock-pci,chardev=vsock0,id={VSOCK_DEVICE_ID}",
        ]
    if isinstance(channel, SerialChannel) or config.debug_console:
        argv += ["-device", "virtio-serial-pci,id=serial0"]
    if isinstance(channel, SerialChannel):
        argv += [
            "-chardev",
            f"socket,id=agent0,path={q(channel.socket)},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent0,name={AGENT_PORT_NAME},id={AGENT_PORT_ID}",
        ]
    if config.debug_console:
        argv += [
            "-chardev",
            f"socket,id=dbgcon,path={q(paths.debug_console_socket)},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=dbgcon,name={DEBUG_CONSOLE_PORT_NAME},"
            f"id={DEBUG_CONSOLE_PORT_ID}",
        ]
    if config.image:
        # read-only and shared: every VM of the host maps the same page cache
        argv += [
            "-object",
            f"memory-backend-file,id=rootfs0,mem-path={q(config.image)},size={image_bytes},"
            "share=on,readonly=on",
            "-device",
            "virtio-pmem-pci,memdev=rootfs0,id=rootfs0dev",
        ]
    if config.free_page_reporting:
        # QEMU punches the pages the guest reports free out of its RAM (memfd or file)
        argv += ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"]
    argv += [
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0,id=rng0dev",
    ]
    if layout is None:
        for i, nic in enumerate(config.nics):
            argv += _nic_args(i, nic)
    argv += config.extra_qemu_args
    if layout is not None and layout.incoming:
        argv += ["-incoming", "defer"]
    return argv


def passed_fds(config: VMConfig, channel: AgentChannel, *, nics: bool = True) -> list[int]:
    """File descriptors the QEMU child must inherit (taps, vhost-vsock).

    `nics=False`: a clone, whose taps are handed over with QMP when hot-plugged."""
    fds = [nic.tap_fd for nic in config.nics if nic.tap_fd is not None] if nics else []
    fds += [fd for nic in config.nics for fd in nic.tap_fds] if nics else []
    if isinstance(channel, VsockChannel) and channel.vhostfd is not None:
        fds.append(channel.vhostfd)
    return fds
