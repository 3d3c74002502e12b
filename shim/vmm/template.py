"""A VM template on disk: what it was made from, whether a pod may use it, and the
files a clone copies (its RAM) and loads (its device state).

A template is a directory holding `memory` (the guest RAM as it was when the agent
sat idle), `state` (QEMU's device state, migrated with x-ignore-shared so the RAM
stays out of it) and `template.json`. Its key has two halves:

- the *shape* (memory, vCPUs, machine, CPU model, accelerator, firmware, agent
  channel, kernel command line, extra QEMU arguments, our layout's version): a pod
  whose VM differs in shape cannot use the template and boots;
- the *inputs* (QEMU, kernel, initrd and firmware files, by size and mtime): when
  one of them changed, the template is stale and is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim.paths import private_dir
from shim.vmm.qemu_args import HOTPLUG_PORTS, kernel_cmdline
from shim.vmm.vm_config import VMConfig

# bump when the template's command line or what a clone does after restore changes
TEMPLATE_FORMAT = 1
META_FILE = "template.json"
RESTORE = "restore"
REBUILD = "rebuild"
BOOT = "boot"


@dataclass(frozen=True)
class TemplateDir:
    """The files of one template directory."""

    path: Path

    @property
    def memory(self) -> Path:
        return self.path / "memory"

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def meta(self) -> Path:
        return self.path / META_FILE

    @property
    def lock_file(self) -> Path:
        """Next to the directory, so that replacing the directory keeps the lock."""
        return self.path.parent / f".{self.path.name}.lock"

    def build_dir(self) -> Path:
        return self.path.parent / f".{self.path.name}.build-{os.getpid()}"


@dataclass(frozen=True)
class Verdict:
    """What a pod does with the template: restore, rebuild it first, or boot; and why."""

    action: str
    reason: str


def shape(config: VMConfig, *, accel: str, cpu: str, firmware: str | None, channel: str) -> dict:
    """The half of the key a pod's VM must match exactly to be a clone of the template."""
    return {
        "format": TEMPLATE_FORMAT,
        "hotplug_ports": HOTPLUG_PORTS,
        "qemu": config.qemu_path,
        "kernel": config.kernel,
        "initrd": config.initrd or "",
        "image": config.image or "",
        "machine_type": config.machine_type,
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "max_vcpus": config.max_vcpus,
        "max_memory_mib": config.max_memory_mib,
        "accel": accel,
        "cpu": cpu,
        "firmware": firmware or "",
        "agent_channel": channel,
        "cmdline": kernel_cmdline(config),
        "extra_qemu_args": list(config.extra_qemu_args),
        "free_page_reporting": config.free_page_reporting,
    }


def file_identity(path: str) -> list[int] | None:
    """[size, mtime_ns] of a file, None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def inputs(config: VMConfig, firmware: str | None) -> dict[str, list[int] | None]:
    """The other half: the files the template's guest was made from."""
    files = {"qemu": config.qemu_path, "kernel": config.kernel}
    if config.initrd:
        files["initrd"] = config.initrd
    if config.image:
        files["image"] = config.image
    if firmware:
        files["firmware"] = firmware
    return {name: file_identity(path) for name, path in files.items()}


def load_meta(tdir: TemplateDir) -> dict[str, Any] | None:
    """template.json, or None when there is no complete template."""
    try:
        meta = json.loads(tdir.meta.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(meta, dict) and tdir.memory.is_file() and tdir.state.is_file()):
        return None
    return meta


def _differences(want: dict, have: dict) -> list[str]:
    return [
        f"{key} {want.get(key)!r} (template: {have.get(key)!r})"
        for key in sorted(set(want) | set(have))
        if want.get(key) != have.get(key)
    ]


def judge(tdir: TemplateDir, want_shape: dict, want_inputs: dict, nics: int = 0) -> Verdict:
    """Whether a pod can be a clone of this template, must rebuild it, or must boot."""
    meta = load_meta(tdir)
    if meta is None:
        return Verdict(BOOT, f"no template in {tdir.path} (make one: pykata-runtime factory init)")
    if nics + 1 > HOTPLUG_PORTS:
        return Verdict(BOOT, f"{nics} NICs need more than the template's {HOTPLUG_PORTS} ports")
    differs = _differences(want_shape, meta.get("shape", {}))
    if differs:
        return Verdict(
            BOOT,
            "the template was made for another VM: " + "; ".join(differs)
            + " (pykata-runtime factory init makes one for this configuration)",
        )
    changed = [
        f"the {name} changed since the template was made"
        for name in sorted(want_inputs)
        if want_inputs[name] != meta.get("inputs", {}).get(name)
    ]
    if changed:
        return Verdict(REBUILD, "; ".join(changed))
    return Verdict(RESTORE, f"template made {meta.get('created', '?')}")


def describe(tdir: TemplateDir) -> dict[str, Any]:
    """What `factory status` shows: files, sizes (allocated, not apparent), meta."""
    meta = load_meta(tdir)
    out: dict[str, Any] = {"path": str(tdir.path), "present": meta is not None}
    if meta is None:
        return out
    out.update(
        created=meta.get("created"),
        age_seconds=round(time.time() - meta.get("created_unix", time.time()), 1),
        memory_bytes_used=allocated(tdir.memory),
        state_bytes=tdir.state.stat().st_size,
        build_seconds=meta.get("build_seconds"),
        shape=meta.get("shape"),
        on_tmpfs=on_tmpfs(tdir.path),
    )
    return out


def allocated(path: Path) -> int:
    """Bytes a sparse file really holds."""
    return path.stat().st_blocks * 512


def on_tmpfs(path: Path) -> bool:
    """Whether path is on tmpfs (a template's RAM file belongs in memory, not on disk)."""
    from shim.mountinfo import fstype_of

    return fstype_of(str(path)) == "tmpfs"


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each data region of a sparse file (SEEK_DATA/SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole after offset
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


COPY_CHUNK = 1 << 20


def copy_sparse(src: Path, dst_fd: int) -> int:
    """Copy a sparse file into an open file (a memfd), data extents only; bytes copied.

    Through one reused 1 MiB buffer: copy_file_range cannot cross filesystems, and
    reading whole extents into new objects took 6x as long here."""
    copied = 0
    buf = memoryview(bytearray(COPY_CHUNK))
    with open(src, "rb") as fin:
        fd = fin.fileno()
        size = os.fstat(fd).st_size
        os.ftruncate(dst_fd, size)
        for start, end in _data_extents(fd, size):
            position = start
            while position < end:
                n = os.preadv(fd, [buf[: min(COPY_CHUNK, end - position)]], position)
                if n == 0:
                    raise OSError(errno.EIO, f"{src} ended early at {position}")
                os.pwritev(dst_fd, [buf[:n]], position)
                position += n
            copied += end - start
    return copied


def lock(tdir: TemplateDir, exclusive: bool) -> int:
    """flock on the template's lock file (waits): exclusive to replace the template,
    shared to read it. Returns the fd; closing it releases the lock."""
    # the guest RAM and device state of the template are below: 0700 like STATE_ROOT
    private_dir(tdir.lock_file.parent)
    fd = os.open(tdir.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def install(tdir: TemplateDir, build: Path) -> None:
    """Put a finished build in place of the template (hold the exclusive lock)."""
    old = tdir.path.parent / f".{tdir.path.name}.old-{os.getpid()}"
    if tdir.path.exists():
        os.rename(tdir.path, old)
    os.rename(build, tdir.path)
    shutil.rmtree(old, ignore_errors=True)


def destroy(tdir: TemplateDir) -> bool:
    """Remove the template and any build left over; whether there was one."""
    fd = lock(tdir, exclusive=True)
    try:
        existed = tdir.path.exists()
        shutil.rmtree(tdir.path, ignore_errors=True)
        for leftover in tdir.path.parent.glob(f".{tdir.path.name}.build-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        tdir.lock_file.unlink()
    return existed


def write_meta(build: Path, meta: dict[str, Any]) -> None:
    (build / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
