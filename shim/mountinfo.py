"""Which mount points lie under a path: /proc/self/mountinfo, standard library only.

Kept apart from shim.sandbox.mounts so that `delete`, run by containerd for
every container, can see that nothing is mounted without loading libc calls.
"""

from __future__ import annotations

import os


def mounted_under(prefix: str) -> list[str]:
    """Mount points at or below prefix, deepest first (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(prefix)
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def fstype_of(path: str) -> str | None:
    """The file system type of the mount that holds path (its deepest mount point)."""
    path = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, right.split()[0]
    except OSError:
        return None
    return fstype


def writable_under(prefix: str) -> list[str]:
    """Mount points at or below prefix whose per-mount options are not read-only."""
    prefix = os.path.realpath(prefix)
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            inside = point == prefix or point.startswith(prefix.rstrip("/") + "/")
            if inside and "ro" not in fields[5].split(","):
                found.append(point)
    return found
