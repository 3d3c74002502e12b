"""What watches a running pod: its VM's death, the guest's OOM kills, the console log's size."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

import ttrpc
from shim.pod import oom
from shim.pod.events import OutOfMemory, Report
from shim.vmm import console_log

if TYPE_CHECKING:
    from shim.pod.pod import Pod
    from shim.sandbox.sandbox import Sandbox

log = structlog.get_logger(__name__)
DEATH_GRACE = 2.0  # an agent call failed: how long the VM's death may take to be seen


class PodWatchers:
    """The tasks that watch one pod's sandbox while it runs."""

    def __init__(self, pod: Pod, report: Report) -> None:
        self._pod = pod
        self._report = report
        self._death: asyncio.Task[None] | None = None
        self._oom: asyncio.Task[None] | None = None
        self._console: asyncio.Task[None] | None = None  # keeps console.log capped

    def start(self, sandbox: Sandbox) -> None:
        loop = asyncio.get_running_loop()
        self._oom = loop.create_task(self.watch_oom(sandbox))
        self._death = loop.create_task(self._watch_death(sandbox))
        self._console = loop.create_task(console_log.keep_capped(sandbox.vm.console_log))

    def stop_death_and_console(self) -> None:
        """Before the VM stops: its end is no death (the death watcher itself goes on)."""
        for watcher in (self._death, self._console):
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()
        self._console = None

    def stop_oom(self) -> None:
        """After the sandbox's end: its last OOM events have been read."""
        if self._oom is not None:
            self._oom.cancel()
            self._oom = None

    async def vm_died_meanwhile(self, exc: Exception) -> bool:
        """An agent call failed as its connection broke: is the VM dying? (its watcher
        then owns the exits; the socket's end may reach us before QEMU's exit does)."""
        watcher = self._death
        if watcher is None or not isinstance(exc, ttrpc.TTRPCError):
            return False
        if exc.code != ttrpc.Code.UNAVAILABLE:
            return False
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(watcher), DEATH_GRACE)
        return watcher.done() and not watcher.cancelled()

    async def _watch_death(self, sandbox: Sandbox) -> None:
        """Deaths flow up: QEMU or virtiofsd gone (a crash, a kill, a guest panic).

        Agent calls in flight fail at once with the reason, every process of the pod
        gets exit status 255 (reported once each), and the VM's remains are torn down;
        containerd then deletes the tasks as usual.
        """
        reason = await sandbox.vm.wait_death()
        if reason is None or self._pod.sandbox is not sandbox:
            return
        log.error("the pod's VM died", sandbox=sandbox.id, reason=reason)
        await sandbox.agent.close(f"the pod's VM died: {reason}")
        await self._pod.on_death(sandbox, reason)

    async def watch_oom(self, sandbox: Sandbox) -> None:
        """Keep the agent's GetOOMEvent long poll open; report each kill.

        The guest chooses how often it answers: the poll is paced and a container's
        events are passed on at most once a second (shim.pod.oom)."""
        pacer, gate = oom.PollPacer(), oom.OomGate()
        failures = 0
        while self._pod.sandbox is sandbox and sandbox.agent is not None:
            await asyncio.sleep(pacer.delay())
            try:
                container_id = await sandbox.agent.get_oom_event()
            except ttrpc.TTRPCError as exc:
                failures += 1
                log.debug("OOM event poll failed", error=str(exc), failures=failures)
                await asyncio.sleep(min(failures, 10) * 0.5)
                continue
            failures = 0
            if not self._pod.knows(container_id):
                gate.ignore_unknown(container_id)
            elif gate.allow(container_id):
                gate.retain([*self._pod.containers, *self._pod.recently_deleted])
                log.info("container hit its memory limit", container=container_id)
                self._report(OutOfMemory(container_id))
