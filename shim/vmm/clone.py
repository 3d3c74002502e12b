"""What a clone of a template starts from: its RAM's memfd and the device state's fd.

The factory prepares one (shim.vmm.factory.prepare_clone); the launcher
(shim.vmm.vm.launch_vm) starts QEMU on it and releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from shim.vmm import template
from shim.vmm.template import TemplateDir


@dataclass
class Clone:
    """What a clone starts from: a memfd for its private copy of the template's RAM
    (filled by `copy`, while QEMU starts) and the template's device state."""

    tdir: TemplateDir
    memory_fd: int
    state_fd: int
    copied: int = 0
    copying: asyncio.Future[int] | None = None

    def copy(self, unlock_fd: int | None = None) -> int:
        """Copy the template's RAM into the memfd; closes `unlock_fd` (the shared lock
        that keeps the template in place) when done."""
        try:
            self.copied = template.copy_sparse(self.tdir.memory, self.memory_fd)
        finally:
            if unlock_fd is not None:
                os.close(unlock_fd)
        return self.copied

    async def copied_ram(self) -> int:
        """Wait for the copy started by prepare_clone."""
        assert self.copying is not None
        return await asyncio.shield(self.copying)

    async def release(self) -> None:
        """Close both fds, once a copy in flight has ended (its thread writes the memfd)."""
        if self.copying is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.copying)
        for name in ("memory_fd", "state_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
