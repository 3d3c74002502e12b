"""Removing a sandbox's host state: shared by the daemon's stop and the delete action.

Standard library only (plus the lazily loaded mount calls): `delete` runs it
when containerd cleans up after a dead shim.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from shim.sandbox.mounts import unmount_all_under


def unmount_rootfs(bundle: str) -> None:
    """Unmount the container rootfs containerd's mounts put at <bundle>/rootfs."""
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.isdir(rootfs):
        unmount_all_under(rootfs)


def remove_state(state_dir: Path, bundles: Iterable[str] = ()) -> None:
    """Unmount the bundles' rootfs and everything under state_dir, then delete it."""
    for bundle in bundles:
        unmount_rootfs(bundle)
    unmount_all_under(str(state_dir))
    shutil.rmtree(state_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        state_dir.parent.rmdir()  # the namespace folder, when empty
