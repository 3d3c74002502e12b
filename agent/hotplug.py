"""Bring hot-plugged CPUs and memory online (the host's OnlineCPUMem after a resize).

The guest kernel adds a CPU the host plugged in (ACPI) offline, and there is no udev
in the guest to online it; memory blocks come online by themselves with the kernel
parameter memhp_default_state=online, and are onlined here too in case they did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time

CPU_ROOT = "/sys/devices/system/cpu"
MEMORY_ROOT = "/sys/devices/system/memory"
ONLINE_WAIT = 10.0  # seconds the new CPUs may take to appear after the plug
MAX_CGROUPS = 4096  # cpusets widened after a plug, at most


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def _online_all(root: str, pattern: str, attribute: str, offline: str, online: str) -> int:
    """Write `online` to <root>/<entry>/<attribute> of every entry matching `pattern`
    whose attribute reads `offline`; how many were written."""
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    onlined = 0
    for name in names:
        if not re.fullmatch(pattern, name):
            continue
        path = os.path.join(root, name, attribute)
        try:
            with open(path) as f:
                if f.read().strip() != offline:
                    continue
        except OSError:
            continue  # cpu0 has no online file: it is always online
        onlined += _write(path, online)
    return onlined


def online_cpus(root: str = CPU_ROOT) -> int:
    """Online every offline CPU; how many were brought online."""
    return _online_all(root, r"cpu\d+", "online", "0", "1")


def online_memory(root: str = MEMORY_ROOT) -> int:
    """Online every offline memory block; how many were brought online."""
    return _online_all(root, r"memory\d+", "state", "offline", "online")


def widen_cpusets(cpuset_root: str, parent: str) -> int:
    """Give the new CPUs to the containers' cpusets (cgroup v1 keeps a cpuset as it was
    made, so a container would never run on a CPU plugged in after it started): the
    parent, then every cgroup under it that still has what it inherited; one whose
    cpuset was set on purpose keeps it. How many cpusets were widened."""
    try:
        with open(os.path.join(cpuset_root, "cpuset.cpus")) as f:
            online = f.read().strip()  # the root cpuset follows the online CPUs
    except OSError:
        return 0  # cgroup v2 (an empty cpuset.cpus inherits), or no cpuset controller
    folder = os.path.join(cpuset_root, parent.strip("/"))
    if not os.path.isdir(folder):
        return 0
    # a walk of our own, not recursion: a container may nest cgroups under its own as
    # deep as it likes, and only so many are looked at
    widened, pending = 0, [(folder, None)]
    for _ in range(MAX_CGROUPS):
        if not pending:
            break
        path, inherited = pending.pop()
        try:
            with open(os.path.join(path, "cpuset.cpus")) as f:
                current = f.read().strip()
        except OSError:
            continue
        if inherited is not None and current != inherited:
            continue  # set on purpose: it and what is under it keep theirs
        if current != online:
            widened += _write(os.path.join(path, "cpuset.cpus"), online)
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            pending += [(e.path, current) for e in entries if e.is_dir(follow_symlinks=False)]
    return widened


async def online(nb_cpus: int, *, wait: bool, cpu_only: bool,
                 cpu_root: str = CPU_ROOT, memory_root: str = MEMORY_ROOT) -> tuple[int, int]:
    """Online new CPUs (waiting, with `wait`, until nb_cpus of them were) and memory;
    (cpus, memory blocks) brought online. TimeoutError if the CPUs never came."""
    cpus = online_cpus(cpu_root)
    deadline = time.monotonic() + ONLINE_WAIT
    while wait and cpus < nb_cpus:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{cpus} of {nb_cpus} new CPUs came online in {ONLINE_WAIT:g} s")
        await asyncio.sleep(0.05)
        cpus += online_cpus(cpu_root)
    blocks = 0 if cpu_only else online_memory(memory_root)
    return cpus, blocks
