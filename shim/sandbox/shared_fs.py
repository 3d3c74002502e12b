"""The sandbox's shared folder: what virtiofsd exports to the guest.

Kata's layout: `mounts/` is where the shim bind-mounts container root
filesystems and files; `shared/` is a read-only, slave bind of `mounts/`, and is
what virtiofsd exports. Mounts made under `mounts/` later propagate into
`shared/`, while the guest cannot create anything at the top of the share.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pykata_common.contract import GUEST_SHARED_DIR
from shim.mountinfo import mounted_under, writable_under
from shim.sandbox.mounts import (
    MS_BIND,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MountError,
    bind_readonly,
    mount,
    remount_readonly,
    set_propagation,
    unmount,
    unmount_all_under,
)


class SharedDir:
    """mounts/ + shared/ in a sandbox's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.mounts = state_dir / "mounts"
        self.shared = state_dir / "shared"

    def setup(self) -> None:
        """Create both folders and the read-only slave bind between them."""
        self.mounts.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.shared.mkdir(mode=0o750, parents=True, exist_ok=True)
        mount(str(self.mounts), str(self.mounts), None, MS_BIND)
        set_propagation(str(self.mounts), MS_SHARED)
        mount(str(self.mounts), str(self.shared), None, MS_BIND | MS_REC)
        set_propagation(str(self.shared), MS_SLAVE, recursive=True)
        mount("", str(self.shared), None, MS_REMOUNT | MS_BIND | MS_RDONLY)

    def share_dir(
        self, container_id: str, name: str, host_path: str, *, readonly: bool = False
    ) -> str:
        """Bind a host folder (or file) into the share; returns its path in the guest.

        readonly: read-only where virtiofsd sees it, submounts included; checked in
        mountinfo, and a share that is not is undone and refused (MountError)."""
        target = self.mounts / container_id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(host_path):
            target.mkdir(exist_ok=True)
        else:
            target.touch(exist_ok=True)
        if readonly:
            self._bind_readonly(host_path, target, self.shared / container_id / name)
        else:
            mount(host_path, str(target), None, MS_BIND | MS_REC)
        return f"{GUEST_SHARED_DIR}/{container_id}/{name}"

    @staticmethod
    def _bind_readonly(host_path: str, target: Path, exported: Path) -> None:
        try:
            bind_readonly(host_path, str(target))
        except MountError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            # before Linux 5.12: bind, then remount each copy (ours and the exported one)
            mount(host_path, str(target), None, MS_BIND | MS_REC)
            remount_readonly(str(target))
            remount_readonly(str(exported))
        writable = writable_under(str(target)) + writable_under(str(exported))
        if writable or not mounted_under(str(exported)):
            unmount_all_under(str(target))
            raise MountError(
                errno.EROFS,
                f"cannot share {host_path} read-only: "
                + (f"still writable at {', '.join(writable)}" if writable else "not exported"),
            )


__all__ = ["SharedDir", "unmount"]
