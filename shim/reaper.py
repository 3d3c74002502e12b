"""Subreaper duties: become the reaper of orphans, and reap the ones nobody waits for."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> None:
    """Orphaned descendants (e.g. a helper's children) re-parent to this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def zombie_children() -> set[int]:
    """Our children that have exited and not been waited for."""
    from shim.vmm import procs

    me = str(os.getpid())
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = procs.stat_fields(int(entry))
            if fields and fields[0] == "Z" and fields[1] == me:
                found.add(int(entry))
    return found


async def reap_orphans_forever(interval: float = 15.0) -> None:
    """Reap zombies still unreaped one interval after they were first seen.

    Children the daemon started itself are waited for by asyncio at once, so a
    zombie that lingers is an orphan nobody else will reap. Waiting an interval
    keeps us from stealing an exit status asyncio is about to collect.
    """
    seen: set[int] = set()
    while True:
        await asyncio.sleep(interval)
        zombies = zombie_children()
        for pid in zombies & seen:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        seen = zombies
