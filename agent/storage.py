"""Storages of Kata's agent API (grpc.Storage): what to mount where in the guest.

Supported drivers: `virtio-fs` (the shared directory, tag kataShared), `9p`,
`ephemeral` (tmpfs), `local` (a plain directory), `bind`. Block devices and
the like answer INVALID_ARGUMENT. A mount point already mounted is left as it
is and counted, so a storage shared by the sandbox and its containers is
mounted once and unmounted with its last user; one mounted before the agent
came is never unmounted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

# driver -> default filesystem type
DRIVERS = {
    "virtio-fs": "virtiofs",
    "virtiofs": "virtiofs",
    "9p": "9p",
    "ephemeral": "tmpfs",
    "bind": "",
    "local": None,
}
STORAGE_HANDLERS = sorted(DRIVERS)
# A VM restored from a template gets its virtio-fs device hot-plugged just before the
# agent's first call; until the guest has probed it, mounting the tag fails (EINVAL).
TAG_WAIT = 5.0
TAG_POLL = 0.01


def mounted(path: str) -> bool:
    """Whether path is a mount point (per /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as table:
            for line in table:
                target = line.split(" ", 5)[4].replace("\\040", " ")
                if target == path:
                    return True
    except OSError:
        pass
    return False


class Storages:
    """Mount points in use, with how many users each has."""

    def __init__(self) -> None:
        self._users: dict[str, list] = {}  # mount point -> [users, mounted by us]

    def add(self, storage: object) -> str | None:
        """Mount one storage; its mount point (to release later) or None if nothing to undo."""
        driver = storage.driver  # type: ignore[attr-defined]
        point = storage.mount_point  # type: ignore[attr-defined]
        if driver not in DRIVERS:
            raise TTRPCError(
                Code.INVALID_ARGUMENT,
                f"storage driver {driver!r} is not supported (have {', '.join(STORAGE_HANDLERS)})",
            )
        if not point.startswith("/"):
            raise TTRPCError(
                Code.INVALID_ARGUMENT, f"storage mount point {point!r} is not an absolute path"
            )
        point = os.path.normpath(point)
        os.makedirs(point, exist_ok=True)
        if DRIVERS[driver] is None:  # local: just a directory
            return None
        if point in self._users:
            self._users[point][0] += 1
            return point
        if mounted(point):  # mounted before us (by /init, or by hand): never unmount it
            self._users[point] = [1, False]
            return point
        from agent import libc

        fstype = storage.fstype or DRIVERS[driver]  # type: ignore[attr-defined]
        flags, data = libc.mount_options(list(storage.options))  # type: ignore[attr-defined]
        if driver == "bind":
            flags |= libc.MOUNT_FLAGS["bind"][0]
            fstype = ""
        source = storage.source or fstype  # type: ignore[attr-defined]
        if fstype == "virtiofs":
            _mount_when_tag_appears(source, point, flags, data)
        else:
            libc.mount(source, point, fstype, flags, data)
        self._users[point] = [1, True]
        return point

    def release(self, point: str) -> None:
        """One user less; unmount when it was the last."""
        entry = self._users.get(point)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] > 0:
            return
        del self._users[point]
        if not entry[1]:
            return
        from agent import libc

        with contextlib.suppress(OSError):
            libc.umount(point)


def _mount_when_tag_appears(tag: str, point: str, flags: int, data: str) -> None:
    """Mount a virtio-fs tag, waiting (bounded) for a device still being hot-plugged."""
    from agent import libc

    deadline = time.monotonic() + TAG_WAIT
    while True:
        try:
            libc.mount(tag, point, "virtiofs", flags, data)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT) or time.monotonic() > deadline:
                raise
        time.sleep(TAG_POLL)
