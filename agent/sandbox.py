"""The pod inside the VM: hostname, DNS, shared filesystem, the containers' table.

The shared filesystem (virtiofs tag kataShared) comes as a storage of
CreateSandbox, mounted at /run/kata-containers/shared/containers; a container's
root filesystem is <shared_dir>/<container id>/rootfs unless its spec names an
absolute root path.

The container machinery (runc driver, spec conversion, mounts, OOM watch) is
imported on first use: a VM spends its boot answering Check, not creating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from agent.children import Reaper
from agent.config import Config
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

if TYPE_CHECKING:
    from agent.container import Container
    from agent.oom import OomWatcher
    from agent.pidns import PodPidNamespace
    from agent.runtime import OciRuntime
    from agent.storage import Storages

log = logging.getLogger("agent.sandbox")


def resolv_conf_lines(entries: list[str]) -> str:
    """resolv.conf text from Kata's `dns` list (whole lines; a bare address is a nameserver)."""
    lines = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        if " " not in entry and (":" in entry or entry.replace(".", "").isdigit()):
            entry = f"nameserver {entry}"
        lines.append(entry)
    return "\n".join(lines) + "\n"


class Sandbox:
    """Everything the agent knows about its pod."""

    def __init__(self, config: Config, reaper: Reaper) -> None:
        self.config = config
        self.reaper = reaper
        self._runc: OciRuntime | None = None
        self.id = ""
        self.created = False
        self.containers: dict[str, Container] = {}
        self._reserved: set[str] = set()
        self._storages: Storages | None = None
        self._sandbox_mounts: list[str] = []
        self._pidns_holder: str | None = None  # the container holding it (a pause container)
        self._pidns: PodPidNamespace | None = None  # or the agent's own pause process
        self._oom: OomWatcher | None = None
        self._consoles = os.path.join(config.run_dir, ".consoles")  # console sockets

    @property
    def runc(self) -> OciRuntime:
        if self._runc is None:
            from agent.runtime import OciRuntime

            self._runc = OciRuntime(self.reaper, self.config.runc, self.config.runc_root)
        return self._runc

    @property
    def storages(self) -> Storages:
        if self._storages is None:
            from agent.storage import Storages

            self._storages = Storages()
        return self._storages

    @property
    def oom(self) -> OomWatcher:
        if self._oom is None:
            from agent.oom import OomWatcher

            self._oom = OomWatcher(self.config.cgroup_root)
        return self._oom

    def recount_oom(self, cid: str) -> None:
        """A container's init exited: its OOM kills are reported now (GetOOMEvent)."""
        if self._oom is not None:
            self._oom.recount(cid)

    async def prewarm(self) -> None:
        """The one-time work of the first sandbox and container, done now (in the VM a
        template is made from, so that every clone starts with it done): the modules
        CreateSandbox and CreateContainer import, the runtime's sealed copy, one run of it."""
        import shutil  # noqa: F401

        from agent import container, oci, process, stdio, storage  # noqa: F401
        from agent.children import run
        from protos.kata import oci_pb2  # noqa: F401

        self.storages  # noqa: B018
        try:
            await run(self.reaper, [self.runc.executable, "--version"])
        except OSError as exc:
            log.warning("prewarm: %s --version: %s", self.runc.binary, exc)

    # -- sandbox -------------------------------------------------------------------
    def create(self, request: Any) -> None:
        """CreateSandbox: hostname, DNS, storages (the shared fs), the sandbox dirs, and
        with sandbox_pidns the pod's pid namespace (agent.pidns)."""
        if self.created:
            raise TTRPCError(Code.ALREADY_EXISTS, f"sandbox {self.id!r} already exists")
        for folder in (self.config.run_dir, self.config.shared_dir):
            os.makedirs(folder, mode=0o755, exist_ok=True)
        self.id = request.sandbox_id
        if request.hostname:
            import socket

            try:
                socket.sethostname(request.hostname)
            except OSError as exc:
                raise TTRPCError(
                    Code.INTERNAL, f"set hostname {request.hostname!r}: {exc.strerror}"
                ) from None
        if request.dns:
            # In place (no rename): /etc/resolv.conf may be a bind mount.
            with open(self.config.resolv_conf, "w") as out:
                out.write(resolv_conf_lines(list(request.dns)))
        for storage in request.storages:
            point = self._add_storage(storage)
            if point:
                self._sandbox_mounts.append(point)
        if request.sandbox_pidns:
            self._start_pidns()
        self.created = True

    def _start_pidns(self) -> None:
        from agent.pidns import PodPidNamespace

        pidns = PodPidNamespace(self.reaper, os.path.join(self.config.run_dir, ".pause-root"))
        try:
            pidns.start()
        except OSError as exc:
            raise TTRPCError(Code.INTERNAL, f"cannot make the pod's pid namespace: {exc}") from None
        self._pidns = pidns

    def _add_storage(self, storage: Any) -> str | None:
        try:
            return self.storages.add(storage)
        except OSError as exc:
            raise TTRPCError(
                Code.INTERNAL, f"storage {storage.source!r} on {storage.mount_point!r}: {exc}"
            ) from None

    async def destroy(self, *, vm_ends: bool = False) -> None:
        """DestroySandbox: every container goes, then the sandbox's mounts.

        vm_ends: the VM powers off next, so the OCI runtime's own records of the
        containers (`runc delete`) are left to die with it; their processes are
        still killed and their mounts released, so writes reach their devices."""
        cids = list(self.containers)
        results = await asyncio.gather(
            *(self.remove(cid, runtime_records=not vm_ends) for cid in cids),
            return_exceptions=True,
        )
        for cid, result in zip(cids, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("container %s: not removed cleanly: %s", cid, result)
        if self._pidns is not None:
            await self._pidns.stop()  # after the containers: they leave in their own time
            self._pidns = None
        for point in reversed(self._sandbox_mounts):
            self.storages.release(point)  # only set when storages were used
        self._sandbox_mounts.clear()
        if self._oom is not None:
            self._oom.close()
            self._oom = None
        self._remove_cgroup_parent()
        with contextlib.suppress(OSError):
            os.rmdir(self._consoles)
        self.created = False

    def _remove_cgroup_parent(self) -> None:
        """rmdir the (now empty) parent cgroup of the containers, in every hierarchy."""
        root, parent = self.config.cgroup_root, self.config.cgroup_parent.strip("/")
        if not parent:
            return
        try:
            hierarchies = [os.path.join(root, name) for name in os.listdir(root)]
        except OSError:
            return
        for folder in (root, *hierarchies):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(folder, parent))

    # -- containers ----------------------------------------------------------------
    def get(self, cid: str) -> Container:
        container = self.containers.get(cid)
        if container is None:
            raise TTRPCError(Code.NOT_FOUND, f"no container {cid!r}")
        return container

    async def create_container(self, request: Any) -> Container:
        """CreateContainer: storages, config.json, `runc create`."""
        import shutil

        from agent import oci
        from agent.container import Container
        from agent.runtime import OciRuntimeError

        cid = oci.check_id("container id", request.container_id)
        if cid in self.containers or cid in self._reserved:
            raise TTRPCError(Code.ALREADY_EXISTS, f"container {cid!r} already exists")
        if not request.HasField("OCI"):
            raise oci.invalid("CreateContainer without an OCI spec")
        self._reserved.add(cid)
        mounts: list[str] = []
        container: Container | None = None
        try:
            for storage in request.storages:
                point = self._add_storage(storage)
                if point:
                    mounts.append(point)
            config = oci.container_config(
                request.OCI,
                default_root=os.path.join(self.config.shared_dir, cid, "rootfs"),
                cgroups_path=f"{self.config.cgroup_parent}/{cid}",
                pid_namespace=await self._pid_namespace(request.sandbox_pidns),
            )
            oci.apply_sysctls(oci.take_pod_sysctls(config))
            oci.mount_shared_sources(config, self.config.shared_dir)
            container = Container(
                cid,
                os.path.join(self.config.run_dir, cid),
                config,
                runc=self.runc,
                reaper=self.reaper,
                output_limit=self.config.output_limit,
                consoles=self._consoles,
                cgroup_root=self.config.cgroup_root,
            )
            if os.path.exists(container.bundle):  # left by an agent that crashed
                with contextlib.suppress(OciRuntimeError):
                    await self.runc.delete(cid, force=True)
                shutil.rmtree(container.bundle, ignore_errors=True)
            await container.create(request.exec_id or cid)
        except BaseException:
            for point in reversed(mounts):
                self.storages.release(point)
            if container is not None:
                shutil.rmtree(container.bundle, ignore_errors=True)
            raise
        finally:
            self._reserved.discard(cid)
        container.mounts = mounts
        # Watched from now on (its cgroup exists): a process may be OOM-killed
        # before StartContainer even returns.
        self.oom.watch(cid, container.cgroups_path)
        if request.sandbox_pidns and self._pidns is None and self._pidns_holder is None:
            self._pidns_holder = cid  # the pause container: the first to ask for the pod's
        self.containers[cid] = container
        return container

    async def _pid_namespace(self, requested: bool) -> str | None:
        """The pod's pid namespace for a container that asked for it: the agent's own
        (made at CreateSandbox) or else its holder's, the first container that asked.
        None: a new one of the container's own (oci.container_config), which is also
        how the holder gets one. As Kata's agent, each container's request decides."""
        if not requested:
            return None
        if self._pidns is not None:
            return await self._pidns.path()
        if self._pidns_holder is None:
            return None
        holder = self.containers.get(self._pidns_holder)
        if holder is None or holder.init.has_exited:
            raise TTRPCError(
                Code.FAILED_PRECONDITION, "the sandbox pid namespace is gone (its holder exited)"
            )
        return f"/proc/{holder.init.pid}/ns/pid"

    async def start_container(self, cid: str) -> None:
        await self.get(cid).start()

    async def remove(
        self, cid: str, timeout: float | None = None, *, runtime_records: bool = True
    ) -> None:
        """RemoveContainer: kill, delete, unmount its storages, forget it."""
        container = self.get(cid)
        if self._oom is not None:
            self._oom.unwatch(cid)
        await container.destroy(timeout, runtime_records=runtime_records)
        self.containers.pop(cid, None)
        if self._pidns_holder == cid:
            self._pidns_holder = None
        for point in reversed(container.mounts):
            self.storages.release(point)
