"""GetVolumeStats and ResizeVolume: a volume at a path in the guest.

Stats are Kata's: statvfs of the path, one usage in BYTES (total = blocks,
available = free blocks, used = total - available; Kata counts free blocks,
reserved ones included, not the blocks available to non-root) and one in
INODES, with the condition "OK" when the path opens.

Resizing grows the filesystem on a block device to the device's size, after the
host grew the disk (ext2/3/4 with resize2fs, xfs with xfs_growfs). What cannot
be done is said: a path that is not on a block device (virtio-fs, tmpfs, the
initramfs: grow those on the host) or a tool the guest image lacks is
FAILED_PRECONDITION. This image has neither block device drivers nor those
tools, so a resize is refused with the reason.
"""

from __future__ import annotations

import os
import stat
from typing import Any, NamedTuple

from agent.children import Reaper, run, which
from protos.kata import agent_pb2
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

MOUNTINFO = "/proc/self/mountinfo"
RESIZE_TIMEOUT = 300.0
BLKGETSIZE64 = 0x80081272
Unit = agent_pb2.VolumeUsage.Unit


def _checked(path: str) -> str:
    if not path or not os.path.isabs(path):
        raise TTRPCError(Code.INVALID_ARGUMENT, f"volume path must be absolute: {path!r}")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        raise TTRPCError(Code.NOT_FOUND, f"volume {path}: no such file or directory") from None
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"volume {path}: {exc.strerror}") from None
    return path


def stats(path: str) -> Any:
    """VolumeStatsResponse for the filesystem holding `path`."""
    try:
        fs = os.statvfs(_checked(path))
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"statvfs {path}: {exc.strerror}") from None
    # f_blocks counts f_frsize units (what statfs's f_bsize is on common filesystems)
    total, free = fs.f_blocks * fs.f_frsize, fs.f_bfree * fs.f_frsize
    usage = [
        agent_pb2.VolumeUsage(available=free, total=total, used=total - free, unit=Unit.BYTES),
        agent_pb2.VolumeUsage(
            available=fs.f_ffree, total=fs.f_files, used=fs.f_files - fs.f_ffree, unit=Unit.INODES
        ),
    ]
    condition = agent_pb2.VolumeCondition(abnormal=False, message="OK")
    return agent_pb2.VolumeStatsResponse(usage=usage, volume_condition=condition)


class Mount(NamedTuple):
    """One line of mountinfo: where, what type, from what."""

    point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mount_of(path: str, mountinfo: str = MOUNTINFO) -> Mount:
    """The mount that holds `path` (the longest mount point above it; the last one wins)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    with open(mountinfo) as text:
        for line in text:
            left, _, right = line.partition(" - ")
            point = _unescape(left.split()[4])
            fstype, source = right.split()[:2]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best.point)):
                best = Mount(point, fstype, _unescape(source))
    if best is None:
        raise TTRPCError(Code.NOT_FOUND, f"volume {path}: no mount holds it")
    return best


def grow_command(mount: Mount) -> list[str]:
    """argv that grows the filesystem of `mount` to its device's size."""
    try:
        block = stat.S_ISBLK(os.stat(mount.source).st_mode)
    except OSError:
        block = False
    if not block:
        raise TTRPCError(
            Code.FAILED_PRECONDITION,
            f"{mount.point} is a {mount.fstype} filesystem on {mount.source!r}, not on a block "
            "device: it cannot be resized from the guest (resize it on the host)",
        )
    if mount.fstype in ("ext2", "ext3", "ext4"):
        tool, argv = "resize2fs", [mount.source]
    elif mount.fstype == "xfs":
        tool, argv = "xfs_growfs", [mount.point]
    else:
        raise TTRPCError(
            Code.FAILED_PRECONDITION, f"cannot resize a {mount.fstype} filesystem ({mount.point})"
        )
    path = which(tool)
    if path is None:
        raise TTRPCError(Code.FAILED_PRECONDITION, f"{tool} not found in the guest image")
    return [path, *argv]


def device_bytes(device: str) -> int:
    """Size of a block device in bytes."""
    import fcntl
    import struct

    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
    finally:
        os.close(fd)


async def resize(reaper: Reaper, path: str, size: int, mountinfo: str = MOUNTINFO) -> None:
    """Grow the filesystem holding `path` to fill its block device, which the host
    grew to `size` bytes first (a device still smaller is FAILED_PRECONDITION)."""
    mount = mount_of(_checked(path), mountinfo)
    argv = grow_command(mount)
    have = device_bytes(mount.source)
    if size and have < size:
        raise TTRPCError(
            Code.FAILED_PRECONDITION,
            f"{mount.source} holds {have} bytes, less than the {size} asked for: "
            "grow the disk on the host first",
        )
    try:
        done = await run(reaper, argv, timeout=RESIZE_TIMEOUT)
    except TimeoutError as exc:
        raise TTRPCError(Code.DEADLINE_EXCEEDED, str(exc)) from None
    if done.status != 0:
        raise TTRPCError(Code.INTERNAL, f"{os.path.basename(argv[0])} failed: {done.error_text}")
