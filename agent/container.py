"""A container's life: create, start, exec, signal, pause, resume, update, stats, destroy.

Each container has a bundle directory (<run_dir>/<id>) with runc's config.json,
its init process and its exec'd processes. Operations that change the
container's state hold its lock; reads of stdio and waits do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal as signals
import time
from typing import Any

from agent.children import Reaper
from agent.process import Process
from agent.runtime import OciRuntime, OciRuntimeError
from agent.stdio import ConsoleSocket, PipeSet
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

log = logging.getLogger("agent.container")

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"
KEEP_FINISHED_EXECS = 64  # exited, waited and drained execs kept for late questions


def precondition(message: str) -> TTRPCError:
    return TTRPCError(Code.FAILED_PRECONDITION, message)


def internal(message: str) -> TTRPCError:
    return TTRPCError(Code.INTERNAL, message)


class Container:
    """One container of the sandbox."""

    def __init__(
        self,
        cid: str,
        bundle: str,
        config: dict[str, Any],
        *,
        runc: OciRuntime,
        reaper: Reaper,
        output_limit: int,
        consoles: str,
        cgroup_root: str,
    ) -> None:
        self.id = cid
        self.bundle = bundle
        self.config = config
        self.runc = runc
        self.reaper = reaper
        self.output_limit = output_limit
        self.consoles = consoles  # folder for console sockets (short paths)
        self.cgroup_root = cgroup_root  # where the cgroup files are read (stats)
        self.init = Process("", init=True, terminal=bool(config["process"].get("terminal")))
        self.execs: dict[str, Process] = {}
        self.mounts: list[str] = []  # storage mount points this container holds
        self.lock = asyncio.Lock()
        self._state = CREATED
        self._exec_files = itertools.count(1)

    @property
    def status(self) -> str:
        return STOPPED if self.init.has_exited else self._state

    @property
    def cgroups_path(self) -> str:
        return self.config["linux"]["cgroupsPath"]

    # -- processes -------------------------------------------------------------
    def process(self, exec_id: str) -> Process:
        """The init for "" or the init's exec id, else the exec; NOT_FOUND otherwise."""
        if not exec_id or exec_id == self.init.exec_id:
            return self.init
        found = self.execs.get(exec_id)
        if found is None:
            raise TTRPCError(Code.NOT_FOUND, f"container {self.id}: no process {exec_id!r}")
        return found

    async def _launch(self, process: Process, launch: Any, *, terminal: bool) -> None:
        """Give process its stdio, run `launch(stdio, console_socket)` (runc), watch its exit."""
        pipes = console = receiving = None
        if terminal:
            console = ConsoleSocket.listen(self.consoles)
            receiving = asyncio.ensure_future(console.receive())
        else:
            pipes = PipeSet.new()
        started = time.monotonic()
        try:
            pid = await launch(pipes.child if pipes else None, console.path if console else None)
            if pipes is not None:
                pipes.close_child()
            process.pid = pid
            process.exited = self.reaper.watch(pid, since=started)
            if receiving is not None:
                process.attach_console(await asyncio.wait_for(receiving, 10), self.output_limit)
            elif pipes is not None:
                process.attach_pipes(pipes, self.output_limit)
        except BaseException:
            if receiving is not None:
                receiving.cancel()
            if pipes is not None:
                pipes.close_all()
            raise
        finally:
            if console is not None:
                console.close()

    async def create(self, exec_id: str) -> None:
        """Write config.json and `runc create` the init (it waits for StartContainer)."""
        self.init.exec_id = exec_id
        os.makedirs(self.bundle, mode=0o700, exist_ok=True)
        with open(os.path.join(self.bundle, "config.json"), "w") as out:
            json.dump(self.config, out)

        async def launch(stdio: Any, console: str | None) -> int:
            return await self.runc.create(self.id, self.bundle, stdio=stdio, console_socket=console)

        began = time.monotonic()
        try:
            await self._launch(self.init, launch, terminal=self.init.terminal)
        except OciRuntimeError as exc:
            raise internal(f"container {self.id}: {exc}") from None
        took = time.monotonic() - began
        log.debug("container %s: %s create took %.3fs", self.id, self.runc.name, took)

    async def start(self) -> None:
        async with self.lock:
            if self.status != CREATED:
                raise precondition(f"container {self.id} is {self.status}, not created")
            began = time.monotonic()
            try:
                await self.runc.start(self.id)
            except OciRuntimeError as exc:
                raise internal(f"container {self.id}: {exc}") from None
            self._state = RUNNING
            self.init.started = True
            took = time.monotonic() - began
            log.debug("container %s: %s start took %.3fs", self.id, self.runc.name, took)

    async def exec(self, exec_id: str, process_config: dict[str, Any]) -> Process:
        """`runc exec` one more process; ALREADY_EXISTS for a known exec id."""
        async with self.lock:
            if exec_id in self.execs or exec_id == self.init.exec_id:
                raise TTRPCError(
                    Code.ALREADY_EXISTS, f"container {self.id}: exec id {exec_id!r} exists"
                )
            if self.status != RUNNING:
                raise precondition(f"cannot exec in container {self.id}: it is {self.status}")
            self._prune_execs()
            process = Process(exec_id, init=False, terminal=bool(process_config.get("terminal")))
            stem = os.path.join(self.bundle, f"exec-{next(self._exec_files)}")
            with open(stem + ".json", "w") as out:
                json.dump(process_config, out)

            async def launch(stdio: Any, console: str | None) -> int:
                return await self.runc.exec(
                    self.id, stem + ".json", stem + ".pid", stdio=stdio, console_socket=console
                )

            try:
                await self._launch(process, launch, terminal=process.terminal)
            except OciRuntimeError as exc:
                raise internal(f"container {self.id}: exec {exec_id}: {exc}") from None
            finally:
                for suffix in (".json", ".pid", ".log"):
                    with contextlib.suppress(OSError):
                        os.unlink(stem + suffix)
            self.execs[exec_id] = process
            log.debug("container %s: exec %s is pid %d", self.id, exec_id, process.pid)
            return process

    def _prune_execs(self) -> None:
        """Forget the oldest execs nobody can still want something from."""
        finished = [eid for eid, p in self.execs.items() if p.finished]
        for eid in finished[: max(len(finished) - KEEP_FINISHED_EXECS, 0)]:
            self.execs.pop(eid).close()

    async def signal(self, exec_id: str, sig: int) -> None:
        """Signal one process; an empty exec id means every process of the container."""
        process = self.process(exec_id)
        log.debug("container %s: signal %d to %r (pid %d)", self.id, sig, exec_id, process.pid)
        await process.signal(sig)
        if not exec_id and self.status != STOPPED:
            with contextlib.suppress(OciRuntimeError):
                await self.runc.kill(self.id, sig, all=True)

    # -- whole container -------------------------------------------------------------
    async def pause(self) -> None:
        async with self.lock:
            if self.status != RUNNING:
                raise precondition(f"cannot pause container {self.id}: it is {self.status}")
            try:
                await self.runc.pause(self.id)
            except OciRuntimeError as exc:
                raise internal(str(exc)) from None
            self._state = PAUSED

    async def resume(self) -> None:
        async with self.lock:
            if self.status != PAUSED:
                raise precondition(f"cannot resume container {self.id}: it is {self.status}")
            try:
                await self.runc.resume(self.id)
            except OciRuntimeError as exc:
                raise internal(str(exc)) from None
            self._state = RUNNING

    async def update(self, resources: dict[str, Any]) -> None:
        async with self.lock:
            if self.status == STOPPED:
                raise precondition(f"cannot update container {self.id}: it is stopped")
            try:
                await self.runc.update(self.id, resources)
            except OciRuntimeError as exc:
                raise internal(str(exc)) from None

    async def stats(self) -> dict[str, Any]:
        """The cgroup figures (runc's stats-event shape), read from the cgroup files."""
        if self.status == STOPPED:
            raise precondition(f"container {self.id} is stopped: no cgroup figures")
        from agent.stats import read_cgroup

        return read_cgroup(self.cgroups_path, root=self.cgroup_root)

    async def destroy(self, timeout: float | None = None, *, runtime_records: bool = True) -> None:
        """Kill every process, `runc delete` (unless not `runtime_records`: the VM
        ends next), close stdio, remove the bundle."""
        async with self.lock:
            if self._state == PAUSED and not self.init.has_exited:
                with contextlib.suppress(OciRuntimeError):
                    await self.runc.resume(self.id)  # frozen tasks cannot die
            if not self.init.has_exited:
                with contextlib.suppress(OciRuntimeError):
                    await self.runc.kill(self.id, signals.SIGKILL, all=True)
                await self.init.signal(signals.SIGKILL)
                if self.init.exited is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(self.init.exited), timeout or 10)
                    except TimeoutError:
                        raise TTRPCError(
                            Code.DEADLINE_EXCEEDED,
                            f"container {self.id}: processes still alive after {timeout}s",
                        ) from None
            try:
                if runtime_records:
                    await self.runc.delete(self.id, force=True)
            except OciRuntimeError as exc:
                if "does not exist" not in str(exc):
                    log.warning("container %s: %s", self.id, exc)
            for process in (self.init, *self.execs.values()):
                process.close()
            import shutil

            shutil.rmtree(self.bundle, ignore_errors=True)
