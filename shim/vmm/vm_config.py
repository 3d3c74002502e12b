"""What a VM is made of: plain data, no I/O (the sandbox layer fills it from the config file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shim.vmm.confinement import ConfinementFloor

Accel = Literal["auto", "kvm", "tcg"]
SharedFS = Literal["virtio-fs", "none"]
# vsock: vhost-vsock (/dev/vhost-vsock); hvsock: hybrid vsock, a vhost-user-vsock device
# whose host side is vhost-device-vsock's Unix socket; serial: a virtio-serial port
AgentTransport = Literal["auto", "vsock", "hvsock", "serial"]

DEFAULT_ASSETS = Path("/usr/share/pykata")
DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"
DEFAULT_VIRTIOFSD = str(DEFAULT_ASSETS / "virtiofsd" / "virtiofsd")
DEFAULT_VHOST_VSOCK = str(DEFAULT_ASSETS / "vhost-device-vsock" / "vhost-device-vsock")
QBOOT = "/usr/share/qemu/qboot.rom"
# x86-64-v2 plus rdrand: under TCG boots ~0.8 s faster than "max" (fewer features to
# emulate), and rdrand feeds the guest's entropy early.
TCG_CPU_MODEL = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+rdrand"


@dataclass
class NicSpec:
    """One guest NIC: a tap given by open fd(s) (passed to QEMU) or by name, and its MAC."""

    mac: str
    tap_fd: int | None = None
    ifname: str | None = None
    id: str | None = None  # netdev/device id; default "net<index>"
    vhost: bool = False  # vhost-net (needs /dev/vhost-net; off on hosts without it)
    mtu: int | None = None
    queues: int = 1  # multi-queue tap opened by name (QEMU opens `queues` queues)
    tap_fds: tuple[int, ...] = ()  # multi-queue tap by fds, one per queue (e.g. a macvtap)


@dataclass
class VMConfig:
    """Everything QEMU and virtiofsd need to start one sandbox VM."""

    qemu_path: str = DEFAULT_QEMU
    kernel: str = str(DEFAULT_ASSETS / "vmlinuz")
    initrd: str | None = str(DEFAULT_ASSETS / "pykata-initrd.img")
    # the guest's root as an ext4 image on a virtio-pmem device, mounted with DAX by the
    # kernel (initrd None) or by the initrd as its first stage; None: the initrd is the root
    image: str | None = None
    machine_type: str = "q35"
    vcpus: int = 1
    memory_mib: int = 2048
    # what the VM may grow to by hot-plug (QEMU's maxcpus and maxmem); at or below
    # vcpus / memory_mib: no hot-plug
    max_vcpus: int = 0
    max_memory_mib: int = 0
    kernel_params: list[str] = field(default_factory=list)  # appended after ours
    debug: bool = False
    shared_fs: SharedFS = "virtio-fs"
    virtiofsd_path: str = DEFAULT_VIRTIOFSD
    virtiofs_cache: str = "auto"  # virtiofsd --cache=auto|always|never|metadata
    virtiofsd_extra_args: list[str] = field(default_factory=list)
    accel: Accel = "auto"
    cpu_model: str | None = None  # None: "host" with KVM, TCG_CPU_MODEL with TCG
    tcg_cache_mib: int = 0  # TCG's translation cache (tb-size); 0: QEMU's default
    firmware: str = "auto"  # "auto": qboot if installed, else QEMU's default; "": default
    netns: str | None = None  # path of the pod's network namespace (QEMU runs inside it)
    nics: list[NicSpec] = field(default_factory=list)
    # auto: vsock where /dev/vhost-vsock works, else hvsock where the daemon is installed,
    # else serial (shim.vmm.channel)
    agent_transport: AgentTransport = "auto"
    # hvsock's vhost-device-vsock; "": none (the sandbox layer gives [hypervisor.qemu]'s,
    # DEFAULT_VHOST_VSOCK unless configured)
    vhost_vsock_daemon: str = ""
    vsock_cid: int | None = None  # None: pick a free one
    seccomp_sandbox: bool = True  # QEMU -sandbox on (if this QEMU supports it)
    # the weakest confinement a pod may start with (below it: ConfinementError)
    confinement: ConfinementFloor = field(default_factory=ConfinementFloor)
    free_page_reporting: bool = True  # the guest returns the pages it frees (virtio-balloon)
    debug_console: bool = False  # a shell in the guest on a port of its own (dbgcon.sock)
    extra_qemu_args: list[str] = field(default_factory=list)
    agent_timeout: float = 60.0  # seconds from launch to the agent's first answer
    stop_timeout: float = 10.0  # seconds to wait for QEMU to quit before SIGKILL
    template_path: str | None = None  # restore from the VM template there (None: always boot)
