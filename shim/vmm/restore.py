"""The QMP side of templates: save a paused VM's device state, load it into a clone,
hot-plug what the clone gets, and give the clone its own clock and randomness."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shim.vmm.errors import VMStartError
from shim.vmm.hotplug import Step
from shim.vmm.qmp import QMP

if TYPE_CHECKING:
    from shim.guest_agent import GuestAgent

STATE_FD_NAME = "template-state"
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
RESEED_BYTES = 512


async def _migration_done(qmp: QMP, what: str) -> dict[str, Any]:
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise VMStartError(f"{what} failed: {info.get('error-desc', status)}")
        await asyncio.sleep(0.005)


async def save(qmp: QMP, state_path: Path) -> dict[str, Any]:
    """Pause the VM and write its device state (not its RAM, which stays in the shared
    file) to state_path; query-migrate's final answer."""
    await qmp.execute("stop")
    await qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await qmp.send_fd(STATE_FD_NAME, fd)
    finally:
        os.close(fd)
    await qmp.execute("migrate", {"uri": f"fd:{STATE_FD_NAME}"})
    return await _migration_done(qmp, "saving the template's device state")


async def load(qmp: QMP, state_fd: int) -> None:
    """Load a template's device state into a QEMU started with `-incoming defer` and
    wait until it is paused and ready for `cont`."""
    await qmp.execute("migrate-set-capabilities", IGNORE_SHARED)
    await qmp.send_fd(STATE_FD_NAME, state_fd)
    await qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD_NAME}"})
    await _migration_done(qmp, "loading the template's device state")
    while (await qmp.execute("query-status")).get("status") == "inmigrate":
        await asyncio.sleep(0.005)


async def hotplug(qmp: QMP, steps: list[Step]) -> None:
    """Run the hot-plug steps in order, handing over their fds first."""
    for step in steps:
        for name, fd in step.fds:
            await qmp.send_fd(name, fd)
        await qmp.execute(step.command, step.arguments)


async def give_identity(agent: GuestAgent) -> None:
    """A clone's wall clock is the template's; its RNG state is every other clone's:
    set the clock and reseed the kernel's RNG from the host's."""
    now = time.time_ns()
    await asyncio.gather(  # one round trip: the agent answers them in order
        agent.set_guest_time(now // 10**9, (now // 1000) % 10**6),
        agent.reseed_random(os.urandom(RESEED_BYTES)),
    )
