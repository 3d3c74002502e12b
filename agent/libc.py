"""The few libc calls the stdlib lacks: prctl, mount, umount2, reboot, unshare, setns
(through ctypes).

ctypes is imported on first use only: an agent that is PID 1 and mounts nothing
never pays for it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWPID = 0x20000000
RB_POWER_OFF = 0x4321FEDC
MNT_DETACH = 2

# mount(2) flags by option name; the value is (flag, set?)
MOUNT_FLAGS: dict[str, tuple[int, bool]] = {
    "ro": (1, True),
    "rw": (1, False),
    "nosuid": (2, True),
    "suid": (2, False),
    "nodev": (4, True),
    "dev": (4, False),
    "noexec": (8, True),
    "exec": (8, False),
    "sync": (16, True),
    "async": (16, False),
    "remount": (32, True),
    "dirsync": (128, True),
    "noatime": (1024, True),
    "atime": (1024, False),
    "nodiratime": (2048, True),
    "diratime": (2048, False),
    "bind": (4096, True),
    "rbind": (4096 | 16384, True),
    "relatime": (1 << 21, True),
    "norelatime": (1 << 21, False),
    "strictatime": (1 << 24, True),
    "defaults": (0, True),
}


@cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def set_child_subreaper() -> None:
    """Become the reaper of orphaned descendants (prctl PR_SET_CHILD_SUBREAPER)."""
    _check(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def mount_options(options: list[str] | tuple[str, ...]) -> tuple[int, str]:
    """Split mount options into mount(2) flags and the filesystem's data string."""
    flags = 0
    data: list[str] = []
    for option in options:
        known = MOUNT_FLAGS.get(option)
        if known is None:
            data.append(option)
        elif known[1]:
            flags |= known[0]
        else:
            flags &= ~known[0]
    return flags, ",".join(data)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2)."""
    _check(
        _libc().mount(
            source.encode(), target.encode(), fstype.encode() or None, flags, data.encode() or None
        ),
        f"mount {source} on {target} ({fstype or 'bind'})",
    )


def umount(target: str, flags: int = MNT_DETACH) -> None:
    """umount2(2), lazily by default."""
    _check(_libc().umount2(target.encode(), flags), f"umount {target}")


def power_off() -> None:
    """Flush the disks and power the machine off. Only ever call this inside the VM."""
    os.sync()
    _check(_libc().reboot(RB_POWER_OFF), "reboot(RB_POWER_OFF)")


def unshare(flags: int) -> None:
    """unshare(2): for CLONE_NEWPID, this thread's next children start a new pid namespace."""
    _check(_libc().unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    """setns(2) into the namespace open at fd."""
    _check(_libc().setns(fd, nstype), f"setns({nstype:#x})")
