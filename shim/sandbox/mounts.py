"""mount(2) and umount2(2) through libc, with containerd's Mount options understood."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from shim.mountinfo import mounted_under

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2
# the new mount API (Linux 5.12+; the numbers are the same on every architecture)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
# flags a read-only remount of a bind keeps (statvfs f_flag bits equal to the MS_ ones)
_KEPT_ON_REMOUNT = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0),
    "nodiratime": (MS_NODIRATIME, 0),
    "relatime": (MS_RELATIME, 0),
    "strictatime": (MS_STRICTATIME, 0),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
    "defaults": (0, 0),
}


@cache
def _libc() -> Any:
    """libc through ctypes, loaded on first use (the delete path mostly needs none)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


class MountError(OSError):
    """A mount or unmount failed; the message names the target and the call."""


@dataclass(frozen=True)
class MountSpec:
    """A containerd Mount: type, source, options (the target is chosen by the caller)."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def flags_and_data(self) -> tuple[int, str]:
        """Split options into mount flags and the filesystem's data string."""
        flags = 0
        data: list[str] = []
        for option in self.options:
            if option in _FLAG_OPTIONS:
                add, clear = _FLAG_OPTIONS[option]
                flags = (flags | add) & ~clear
            else:
                data.append(option)
        if self.type == "bind":
            flags |= MS_BIND
        return flags, ",".join(data)


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    """Call mount(2); raise MountError naming what failed."""
    result = _libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        err = _errno()
        options = f" with options {data}" if data else ""
        raise MountError(
            err,
            f"mount {fstype or 'bind'} {source} on {target}{options} failed: {os.strerror(err)}",
        )


def unmount(target: str, detach: bool = True) -> bool:
    """Unmount target; False when it was not mounted (or is gone)."""
    result = _libc().umount2(target.encode(), MNT_DETACH if detach else 0)
    if result == 0:
        return True
    err = _errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise MountError(err, f"unmount {target} failed: {os.strerror(err)}")


def mount_spec(spec: MountSpec, target: str) -> None:
    """Mount a containerd Mount at target (a bind's read-only flag needs a remount)."""
    flags, data = spec.flags_and_data()
    fstype = None if flags & MS_BIND else spec.type
    mount(spec.source, target, fstype, flags & ~MS_RDONLY if flags & MS_BIND else flags, data)
    if flags & MS_BIND and flags & MS_RDONLY:
        mount("", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | (flags & ~MS_BIND))


def bind_readonly(source: str, target: str) -> None:
    """Bind source, with every submount, at target, read-only throughout from the start.

    The copy is made detached (open_tree), set read-only recursively (mount_setattr),
    then attached (move_mount): the copies that propagation makes into peers and slaves
    (the sandbox's shared/) are read-only too, which a bind then remount never gives
    them. Raises MountError; errno ENOSYS on kernels before 5.12 (see remount_readonly).
    """
    import ctypes

    libc = _libc()
    c = ctypes.c_long
    fd = libc.syscall(
        c(SYS_OPEN_TREE), c(AT_FDCWD), source.encode(),
        c(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE),
    )  # fmt: skip
    if fd < 0:
        err = _errno()
        raise MountError(err, f"open_tree {source} failed: {os.strerror(err)}")
    try:
        attr = ctypes.create_string_buffer(MOUNT_ATTR_RDONLY.to_bytes(8, "little") + bytes(24))
        if libc.syscall(
            c(SYS_MOUNT_SETATTR), c(fd), b"", c(AT_EMPTY_PATH | AT_RECURSIVE), attr, c(32)
        ):
            err = _errno()
            raise MountError(err, f"mount_setattr read-only on {source} failed: {os.strerror(err)}")
        if libc.syscall(
            c(SYS_MOVE_MOUNT), c(fd), b"", c(AT_FDCWD), target.encode(),
            c(MOVE_MOUNT_F_EMPTY_PATH),
        ):  # fmt: skip
            err = _errno()
            raise MountError(err, f"move_mount {source} to {target} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def remount_readonly(prefix: str) -> None:
    """Remount every mount at or below prefix read-only, keeping nosuid/nodev/noexec/atime
    flags (the way to read-only binds on kernels without mount_setattr)."""
    for point in reversed(mounted_under(prefix)):  # parents first
        kept = os.statvfs(point).f_flag & _KEPT_ON_REMOUNT
        mount("", point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def mount_all(specs: Iterable[MountSpec], target: str) -> None:
    """Mount containerd rootfs mounts one over another at target, as runc's shim does."""
    for spec in specs:
        mount_spec(spec, target)


def set_propagation(target: str, propagation: int, recursive: bool = False) -> None:
    """Make a mount point shared, slave or private."""
    mount("", target, None, propagation | (MS_REC if recursive else 0))


def unmount_all_under(prefix: str) -> list[str]:
    """Unmount everything at or below prefix; returns what was unmounted."""
    done: list[str] = []
    for _ in range(8):  # stacked mounts need several passes
        points = mounted_under(prefix)
        if not points:
            break
        for point in points:
            if unmount(point):
                done.append(point)
    return done
