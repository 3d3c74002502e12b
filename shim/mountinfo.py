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
