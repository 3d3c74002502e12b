"""A child process we spawned, with an awaitable exit (pidfd in the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess


class ChildProcess:
    """A child we spawned (subprocess.Popen), with an awaitable exit.

    Uses a pidfd in the event loop where the kernel has one (5.3+), else polls;
    either way no helper thread and no global child watcher.
    """

    def __init__(self, popen: subprocess.Popen[bytes], name: str) -> None:
        self.popen = popen
        self.name = name
        self.pid = popen.pid
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._poller = self._loop.create_task(self._poll())
        else:
            self._loop.add_reader(self._pidfd, self._reap)
        self._reap()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def exited(self) -> asyncio.Future[int]:
        """Resolves to the exit status (negative: killed by that signal)."""
        return self._exited

    def _reap(self) -> None:
        if self.popen.poll() is None or self._exited.done():
            return
        self._close_pidfd()
        self._exited.set_result(self.popen.returncode)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def _poll(self) -> None:
        while not self._exited.done():
            await asyncio.sleep(0.05)
            self._reap()

    async def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None if still running after `timeout`."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except TimeoutError:
            return None

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped already (never a recycled pid)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    async def terminate(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
        if not self._exited.done():
            self.send_signal(signal.SIGTERM)
            if await self.wait(grace) is None:
                self.send_signal(signal.SIGKILL)
        return await self._exited

    async def kill(self) -> int:
        """SIGKILL and reap."""
        self.send_signal(signal.SIGKILL)
        return await self._exited

    def close(self) -> None:
        """Stop watching (after the exit is known)."""
        self._close_pidfd()
        if self._poller is not None:
            self._poller.cancel()
