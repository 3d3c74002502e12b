"""OOM kills in container cgroups, queued for GetOOMEvent (a long poll).

cgroup v1: an eventfd registered on memory.oom_control (cgroup.event_control)
wakes the event loop when the cgroup runs out of memory; that is before the
kernel picks a victim, so the `oom_kill` counter is read then and again over
the next second, and every increase is one event (a cgroup's removal wakes the
eventfd too, and counts nothing). cgroup v2: memory.events' `oom_kill`
counter, checked twice a second while some container is watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from agent.stats import CGROUP_ROOT, pairs, unified

log = logging.getLogger("agent.oom")

V2_POLL = 0.5
QUEUE_LIMIT = 256


def oom_kills(path: str) -> int | None:
    """The `oom_kill` counter of a memory.oom_control (v1) or memory.events (v2) file."""
    return pairs(path).get("oom_kill")


class _Watch:
    def __init__(self, cid: str, counter: str) -> None:
        self.cid = cid
        self.counter = counter
        self.seen = oom_kills(counter) or 0
        self.eventfd = -1
        self.control = -1

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.eventfd >= 0:
            loop.remove_reader(self.eventfd)
        for fd in (self.eventfd, self.control):
            if fd >= 0:
                os.close(fd)
        self.eventfd = self.control = -1

    def check(self) -> int:
        """New kills since the last check."""
        now = oom_kills(self.counter)
        if now is None:
            return 0
        new, self.seen = max(now - self.seen, 0), now
        return new


class OomWatcher:
    """Watches containers' memory cgroups; next() gives the id of the next one OOM-killed."""

    def __init__(self, root: str = CGROUP_ROOT) -> None:
        self._loop = asyncio.get_running_loop()
        self._root = root
        self._v2 = unified(root)
        self._watches: dict[str, _Watch] = {}
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._poller: asyncio.Task[None] | None = None

    def watch(self, cid: str, cgroups_path: str) -> None:
        """Start watching a container's cgroup (cgroups_path as in config.json)."""
        relative = cgroups_path.strip("/")
        try:
            if self._v2:
                watch = _Watch(cid, os.path.join(self._root, relative, "memory.events"))
                self._start_poller()
            else:
                folder = os.path.join(self._root, "memory", relative)
                watch = _Watch(cid, os.path.join(folder, "memory.oom_control"))
                self._register_v1(watch, folder)
        except OSError as exc:
            log.warning("container %s: no OOM notifications: %s", cid, exc)
            return
        self.unwatch(cid)
        self._watches[cid] = watch

    def _register_v1(self, watch: _Watch, folder: str) -> None:
        watch.eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            watch.control = os.open(watch.counter, os.O_RDONLY | os.O_CLOEXEC)
            with open(os.path.join(folder, "cgroup.event_control"), "w") as control:
                control.write(f"{watch.eventfd} {watch.control}")
        except OSError:
            watch.close(self._loop)
            raise
        self._loop.add_reader(watch.eventfd, self._on_event, watch)

    def _on_event(self, watch: _Watch) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_read(watch.eventfd)
        if not os.path.exists(watch.counter):  # the cgroup went away
            watch.close(self._loop)
            return
        self._loop.create_task(self._settle(watch))

    async def _settle(self, watch: _Watch) -> None:
        """Count the kills that follow an out-of-memory notification."""
        for delay in (0.0, 0.05, 0.2, 0.75):
            await asyncio.sleep(delay)
            if watch.control < 0:  # unwatched meanwhile: unwatch() counted
                return
            for _ in range(watch.check()):
                self._push(watch.cid)

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = self._loop.create_task(self._poll())

    async def _poll(self) -> None:
        while self._watches:
            for watch in list(self._watches.values()):
                for _ in range(watch.check()):
                    self._push(watch.cid)
            await asyncio.sleep(V2_POLL)

    def _push(self, cid: str) -> None:
        log.info("container %s: OOM kill", cid)
        if self._events.qsize() >= QUEUE_LIMIT:
            self._events.get_nowait()
        self._events.put_nowait(cid)

    def recount(self, cid: str) -> None:
        """Count a container's kills now (its init has exited: a kill that ended it is in
        the counter), so that the event goes out with the exit, not up to a second later."""
        watch = self._watches.get(cid)
        if watch is not None and (watch.eventfd >= 0 or self._v2):
            for _ in range(watch.check()):
                self._push(cid)

    def unwatch(self, cid: str) -> None:
        self.recount(cid)  # a kill right before the removal still counts
        watch = self._watches.pop(cid, None)
        if watch is not None:
            watch.close(self._loop)

    async def next(self) -> str:
        """Wait for the next OOM kill; the container's id."""
        return await self._events.get()

    def close(self) -> None:
        for cid in list(self._watches):
            self.unwatch(cid)
        if self._poller is not None:
            self._poller.cancel()
