"""KVM or TCG: probe for real, cache the answer until the host reboots, say why.

`/dev/kvm` existing proves little: on PVM-flavoured hosts QEMU aborts with
`failed to set MSR 0x10a` (-cpu host) or hangs in the guest kernel (other CPU
models). So the probe goes in three steps, each only if the previous passed:
1. ioctls: KVM_GET_API_VERSION == 12, KVM_CREATE_VM, KVM_CHECK_EXTENSION(USER_MEMORY);
2. QEMU with accel=kvm runs a 7-byte firmware that writes to isa-debug-exit
   (catches aborts at vCPU setup, ~50 ms);
3. QEMU with accel=kvm boots the real guest kernel without an initrd and must
   reach its "VFS: unable to mount root" panic and exit (catches hangs, ~1 s).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass

import structlog

from shim.vmm.hostcaps import HostCapsCache, file_identity
from shim.vmm.vm_config import TCG_CPU_MODEL

log = structlog.get_logger(__name__)

KVM_DEV = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_USER_MEMORY = 3
KVM_API_VERSION = 12

# real mode at the reset vector: mov al,0x31; out 0xf4,al; hlt; jmp $-3
_RESET_CODE = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
_PROBE_EXIT = (0x31 << 1) | 1  # isa-debug-exit status for the value written
PROBE_VERSION = 2  # part of the cache key: bump when the probe changes


@dataclass(frozen=True)
class KvmProbe:
    """Outcome of probing KVM on this host."""

    usable: bool
    reason: str
    seconds: float = 0.0


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator and CPU model a VM gets, and why."""

    accel: str  # "kvm" | "tcg"
    cpu: str
    reason: str
    cached: bool = False


def decide(
    requested: str, *, kvm_dev: bool, probe: KvmProbe | None, cpu_model: str | None = None
) -> AccelChoice:
    """Pure decision from the configured accel and what the probe found."""
    if requested == "tcg":
        return AccelChoice("tcg", cpu_model or TCG_CPU_MODEL, "accel=tcg configured")
    if requested == "kvm":
        return AccelChoice("kvm", cpu_model or "host", "accel=kvm configured (not probed)")
    if requested != "auto":
        raise ValueError(f"accel must be auto, kvm or tcg, not {requested!r}")
    if not kvm_dev:
        return AccelChoice("tcg", cpu_model or TCG_CPU_MODEL, f"{KVM_DEV} does not exist")
    if probe is None:
        return AccelChoice("tcg", cpu_model or TCG_CPU_MODEL, "KVM not probed")
    if probe.usable:
        return AccelChoice("kvm", cpu_model or "host", f"KVM probe passed: {probe.reason}")
    return AccelChoice("tcg", cpu_model or TCG_CPU_MODEL, f"KVM unusable: {probe.reason}")


def probe_ioctls(dev: str = KVM_DEV) -> tuple[bool, str]:
    """Step 1: the KVM API answers and a VM can be created."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"open {dev}: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            return False, f"KVM API version {version}, expected {KVM_API_VERSION}"
        try:
            vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as e:
            return False, f"KVM_CREATE_VM: {e.strerror}"
        try:
            if fcntl.ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0:
                return False, "KVM_CAP_USER_MEMORY missing"
        finally:
            os.close(vm)
    except OSError as e:
        return False, f"KVM ioctl: {e.strerror}"
    finally:
        os.close(fd)
    return True, "ioctls ok"


def _tail(data: bytes, n: int = 300) -> str:
    """The line that says what went wrong (QEMU's "error:" line), else the last one."""
    lines = [x.strip() for x in data.decode(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if "error" in x.lower()]
    return (errors or lines or [""])[0 if errors else -1][-n:]


def _run(argv: list[str], timeout: float) -> tuple[int | None, bytes]:
    """(exit status or None on timeout, stdout+stderr) of a probe QEMU."""
    try:
        r = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        return None, e.output or b""
    return r.returncode, r.stdout


def _base(qemu: str, cpu: str) -> list[str]:
    return [
        qemu,
        "-machine",
        "q35,accel=kvm",
        "-cpu",
        cpu,
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-no-user-config",
        "-no-reboot",
    ]


def probe_qemu_firmware(qemu: str, cpu: str = "host", timeout: float = 5.0) -> tuple[bool, str]:
    """Step 2: a vCPU with this CPU model can be set up and run a few instructions."""
    with tempfile.NamedTemporaryFile(prefix="pykata-kvm-probe-", suffix=".bin") as f:
        image = bytearray(b"\xf4" * 65536)
        image[0xFFF0 : 0xFFF0 + len(_RESET_CODE)] = _RESET_CODE
        f.write(image)
        f.flush()
        status, out = _run(
            [
                *_base(qemu, cpu),
                "-bios",
                f.name,
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],
            timeout,
        )
    if status == _PROBE_EXIT:
        return True, "firmware probe ok"
    if status is None:
        return False, f"QEMU accel=kvm -cpu {cpu} hung running a 7-byte firmware ({timeout}s)"
    return False, f"QEMU accel=kvm -cpu {cpu} exited {status}: {_tail(out)}"


def probe_qemu_kernel(
    qemu: str, kernel: str, cpu: str = "host", timeout: float = 10.0
) -> tuple[bool, str]:
    """Step 3: the guest kernel boots under KVM as far as its no-root panic."""
    status, out = _run(
        [
            *_base(qemu, cpu),
            "-serial",
            "stdio",
            "-kernel",
            kernel,
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ],
        timeout,
    )
    if status == 0 and b"Kernel panic" in out:
        return True, "kernel boot probe ok"
    if status is None:
        return False, (
            f"guest kernel did not reach its no-root panic under KVM within {timeout}s (hang)"
        )
    return False, f"guest kernel probe exited {status}: {_tail(out)}"


def probe_kvm(qemu: str, kernel: str | None, cpu: str = "host", dev: str = KVM_DEV) -> KvmProbe:
    """All three steps (blocking; run it in a thread)."""
    t0 = time.monotonic()
    ok, reason = probe_ioctls(dev)
    if ok:
        ok, reason = probe_qemu_firmware(qemu, cpu)
    if ok and kernel and os.path.exists(kernel):
        ok, reason = probe_qemu_kernel(qemu, kernel, cpu)
    return KvmProbe(ok, reason, round(time.monotonic() - t0, 3))


async def choose_accel(
    requested: str,
    qemu: str,
    kernel: str | None,
    cpu_model: str | None = None,
    *,
    cache: HostCapsCache | None = None,
    dev: str = KVM_DEV,
) -> AccelChoice:
    """The accelerator for a VM; probes KVM at most once per host boot (cached)."""
    kvm_dev = os.path.exists(dev)
    probe: KvmProbe | None = None
    cached = False
    if requested == "auto" and kvm_dev:
        cpu = cpu_model or "host"
        key = f"kvm{PROBE_VERSION}:{file_identity(qemu)}:{file_identity(kernel)}:{cpu}:{dev}"
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            probe, cached = KvmProbe(**hit), True
        else:
            probe = await asyncio.to_thread(probe_kvm, qemu, kernel, cpu, dev)
            if cache is not None:
                cache.put(
                    key, {"usable": probe.usable, "reason": probe.reason, "seconds": probe.seconds}
                )
    choice = decide(requested, kvm_dev=kvm_dev, probe=probe, cpu_model=cpu_model)
    choice = AccelChoice(choice.accel, choice.cpu, choice.reason, cached)
    log.info(
        "accelerator chosen",
        accel=choice.accel,
        cpu=choice.cpu,
        reason=choice.reason,
        cached=cached,
        probe_seconds=probe.seconds if probe else None,
    )
    return choice
