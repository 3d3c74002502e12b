"""The sandbox's shared folder: what virtiofsd exports to the guest.

Kata's layout: `mounts/` is where the shim bind-mounts container root
filesystems and files; `shared/` is a read-only, slave bind of `mounts/`, and is
what virtiofsd exports. Mounts made under `mounts/` later propagate into
`shared/`, while the guest cannot create anything at the top of the share.
"""

from __future__ import annotations

import os
from pathlib import Path

from shim.sandbox.mounts import (
    MS_BIND,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    mount,
    set_propagation,
    unmount,
)

GUEST_SHARED_DIR = "/run/kata-containers/shared/containers"
VIRTIOFS_TAG = "kataShared"


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

    def share_dir(self, container_id: str, name: str, host_path: str) -> str:
        """Bind a host folder (or file) into the share; returns its path in the guest."""
        target = self.mounts / container_id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(host_path):
            target.mkdir(exist_ok=True)
        else:
            target.touch(exist_ok=True)
        mount(host_path, str(target), None, MS_BIND | MS_REC)
        return f"{GUEST_SHARED_DIR}/{container_id}/{name}"


__all__ = ["GUEST_SHARED_DIR", "VIRTIOFS_TAG", "SharedDir", "unmount"]
