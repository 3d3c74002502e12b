"""Tearing down a sandbox's host side: the one sequence that both the daemon's stop and
the `delete` action run.

It works from what the state directory records (sandbox.json, vm.json,
network.json), so a process that did not start the sandbox can run it. Every step
is idempotent: running it twice, or after an earlier run stopped half-way, finishes
the job. Standard library only at import; `delete` pays for the mount and netlink
code only when something is mounted or recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shim.mountinfo import mounted_under
from shim.paths import CGROUP_FILE, check_state_dir

Report = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


def unmount_rootfs(bundle: str) -> None:
    """Unmount what is mounted at <bundle>/rootfs (the container rootfs containerd gave)."""
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.isdir(rootfs) and mounted_under(rootfs):
        from shim.sandbox.mounts import unmount_all_under

        unmount_all_under(rootfs)


def forget_container(state_dir: Path, record: Any, container_id: str) -> None:
    """Unshare one container and unmount its rootfs; drop it from the sandbox's record.

    Raises InvalidIdentifier when state_dir is not a sandbox directory pykata made."""
    check_state_dir(state_dir)
    from shim.sandbox.shared_fs import SharedDir

    folder = SharedDir(state_dir).mounts / container_id
    if folder.exists():
        from shim.sandbox.mounts import unmount_all_under

        unmount_all_under(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
    container = record.containers.pop(container_id, None) if record is not None else None
    if container is not None:
        if container.rootfs_mounted:  # a rootfs the bundle came with is not ours to unmount
            unmount_rootfs(container.bundle)
        if state_dir.is_dir():
            record.save(state_dir)


def release(state_dir: Path, record: Any, report: Report = _quiet) -> None:
    """Remove everything the sandbox holds on the host, whatever is left of it.

    QEMU and virtiofsd (if still running: SIGTERM, then SIGKILL), the taps and
    filters network.json records, every container's share and rootfs mount, the
    shared folder, and the state directory itself. `record` is the sandbox's
    SandboxRecord (None when sandbox.json is gone). Enters the pod netns: run it
    in a thread of its own (shim.netns.nsenter.in_own_thread) or a short-lived process.
    Refuses (InvalidIdentifier, before touching anything) a state_dir that is not
    STATE_ROOT/<namespace>/<sandbox-id>: it unmounts and removes all that is under it.
    """
    check_state_dir(state_dir)
    from shim.netns import teardown_state
    from shim.vmm import kill_from_state

    for line in kill_from_state(state_dir):
        report(line)
    try:
        for line in teardown_state(state_dir):
            report(line)
    except Exception as exc:  # the network is gone with the netns, or half-undone: go on
        report(f"network cleanup failed: {exc}")
    if (state_dir / CGROUP_FILE).exists():  # the pod's cgroup, once its VM is gone
        from shim.sandbox.cgroup import remove_recorded

        for line in remove_recorded(state_dir):
            report(line)
    for container_id in list(record.containers) if record is not None else []:
        forget_container(state_dir, record, container_id)
    if mounted_under(str(state_dir)):
        from shim.sandbox.mounts import unmount_all_under

        unmount_all_under(str(state_dir))
    shutil.rmtree(state_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        state_dir.parent.rmdir()  # the namespace folder, when it is empty
