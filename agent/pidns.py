"""The pod's pid namespace made by the agent (Kata's sandbox pid namespace).

When CreateSandbox asks for a pod-shared pid namespace (sandbox_pidns: containerd's
Sandbox API, where no pause container comes to hold one), the agent starts its own
pause process (agent/pause.py) as PID 1 of a new pid namespace, and every container
sharing the pod's namespace joins that one. The agent and the guest's own processes
live in the root namespace, which no container ever sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from agent import libc
from agent.children import Reaper, read_to_end, spawn
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

log = logging.getLogger("agent.pidns")

PAUSE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pause.py")
READY = b"ready\n"
READY_TIMEOUT = 30.0


def spawn_in_new_pid_namespace(argv: list[str], **fds: int | None) -> int:
    """spawn() argv as PID 1 of a new pid namespace; the agent's own stays as it was.

    unshare(CLONE_NEWPID) changes where this thread's next children go, so it is
    undone right after the one spawn. Should undoing fail, every later child of the
    agent (the OCI runtime included) would start inside the pod's namespace: the agent
    stops there rather than go on (as PID 1, that ends the VM).
    """
    own = os.open("/proc/thread-self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.unshare(libc.CLONE_NEWPID)
        try:
            return spawn(argv, env={}, **fds)
        finally:
            try:
                libc.setns(own, libc.CLONE_NEWPID)
            except OSError as exc:
                log.critical("cannot return to the agent's pid namespace: %s", exc)
                os._exit(70)
    finally:
        os.close(own)


class PodPidNamespace:
    """The pause process that holds the pod's pid namespace, from start to stop."""

    def __init__(self, reaper: Reaper, root: str) -> None:
        self.reaper = reaper
        self.root = root  # the empty directory the pause process is chrooted into
        self.pid = 0
        self._exited: asyncio.Future[int] | None = None
        self._ready: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the pause process (it gets ready in the background: see path())."""
        os.makedirs(self.root, mode=0o500, exist_ok=True)
        read, write = os.pipe()
        started = time.monotonic()
        try:
            self.pid = spawn_in_new_pid_namespace(
                [sys.executable, "-S", "-I", PAUSE, self.root], stdout=write, stderr=write
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._exited = self.reaper.watch(self.pid, since=started)
        self._ready = asyncio.ensure_future(self._wait_ready(read))
        log.info("pod pid namespace: pause process %d", self.pid)

    async def _wait_ready(self, fd: int) -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                said = await read_to_end(fd)
        except TimeoutError:
            said = b"(no answer in time)"
        if said != READY:
            raise TTRPCError(
                Code.INTERNAL,
                "the pod's pid namespace did not start: "
                + said.decode(errors="replace").strip()[-500:],
            )

    @property
    def alive(self) -> bool:
        """Started and not exited: the reaper's word, or /proc's when the exit is not yet
        reported (a killed pause process is a zombie, then gone, before the reaper's
        future resolves)."""
        if self._exited is None or self._exited.done():
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    async def path(self) -> str:
        """The namespace for a container to join, once its pause process is ready."""
        if self._ready is None:
            raise TTRPCError(Code.FAILED_PRECONDITION, "the pod's pid namespace was not started")
        await asyncio.shield(self._ready)
        if not self.alive:
            raise TTRPCError(
                Code.FAILED_PRECONDITION,
                "the pod's pid namespace is gone (its pause process exited)",
            )
        return f"/proc/{self.pid}/ns/pid"

    async def stop(self) -> None:
        """Kill the pause process (and so whatever is left in the namespace); reap it."""
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.cancel()
        elif ready is not None and not ready.cancelled():
            ready.exception()  # retrieved: path() raised it already, or never will
        if self._exited is None:
            return
        if not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(self._exited)
        with contextlib.suppress(OSError):
            os.rmdir(self.root)
