"""The pod: its Sandbox (VM, network, share), its containers, and what watches them.

One shim daemon serves one Pod. Both doors (the Task API and the Sandbox API) call it;
it reports what happens on its own (exits, OOM kills, its VM's death) through the one
callback it was given. Errors are the pod layer's (shim.pod.errors and the domain errors
below it); the doors' edge turns them into ttrpc codes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

import ttrpc
from shim.config import Config, load_config
from shim.guest_agent import GuestAgent
from shim.netns.nsenter import NetnsRefused
from shim.oci import SpecError, process_to_kata, resources_to_kata
from shim.paths import CONTAINER_TYPE_ANNOTATION, check_identifier, group_of
from shim.pod import process_io, sizing
from shim.pod.container import Container, PodGifts
from shim.pod.errors import (
    AlreadyExists,
    HostFailure,
    InvalidRequest,
    NotFound,
    NotReady,
    StartFailed,
    TooBig,
)
from shim.pod.events import DEAD_VM_STATUS, PodDied, ProcessExited, Report
from shim.pod.port_forward import PortMirror
from shim.pod.process import NEVER_STARTED_STATUS, Process, ProcessStateError, State, Stdio
from shim.pod.sizing import PodLimits, VMSize, vm_size
from shim.pod.watch import PodWatchers
from shim.sandbox.cgroup import CgroupError, sandbox_cgroup_path
from shim.sandbox.mounts import MountError, MountSpec
from shim.sandbox.sandbox import Sandbox, SandboxError, network_namespace
from shim.vmm.confinement import ConfinementError
from shim.vmm.resize import ResizeError

log = structlog.get_logger(__name__)
IO_DRAIN_TIMEOUT = 10.0  # after an exit, how long output may still arrive
SIGKILL = 9
UNREACHABLE = frozenset({ttrpc.Code.DEADLINE_EXCEEDED, ttrpc.Code.UNAVAILABLE})


class Monitor(Protocol):
    """The pod's monitor socket (shim.task_service.monitor_service.SandboxMonitor)."""

    pod_metadata: dict[str, str]

    def observe_agent(self, agent: GuestAgent) -> None: ...
    async def open(self, sandbox: Sandbox) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class PodSettings:
    """What the pod's VM is booted with, from the first container's spec or the Sandbox API."""

    sandbox_id: str
    config: Config
    netns: str | None
    hostname: str = ""
    dns: tuple[str, ...] = ()
    cgroup_path: str | None = None
    sandbox_pidns: bool = False  # the agent makes the pod's pid namespace (no pause)
    limits: PodLimits | None = None  # what the pod is limited to: the VM grows by it

    def vm_size(self) -> VMSize:
        runtime = self.config.runtime
        return vm_size(self.config.hypervisor, self.limits,
                       static=runtime.static_sandbox_resource_mgmt)


def settings_from_spec(
    namespace: str, container_id: str, spec: dict[str, Any], options: tuple[str, bytes]
) -> PodSettings:
    """A pod booted for its first container (a pause container, or a lone `ctr run`)."""
    sandbox_id = group_of(spec, container_id)
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise SpecError("annotations must be an object")
    limits = sizing.from_annotations(annotations) or sizing.from_spec(spec)
    return PodSettings(
        sandbox_id=sandbox_id,
        config=load_config(*options),
        netns=network_namespace(spec),
        hostname=spec.get("hostname", "") or "",
        cgroup_path=sandbox_cgroup_path(
            (spec.get("linux") or {}).get("cgroupsPath"),
            default=f"/pykata/{namespace}/{sandbox_id}",
        ),
        limits=limits,
    )


class Pod:
    """A pod and its containers, behind both API doors."""

    def __init__(self, namespace: str, report: Report) -> None:
        self.namespace = namespace
        self._report = report
        self.sandbox: Sandbox | None = None
        self.containers: dict[str, Container] = {}
        # True when containerd's Sandbox API made the pod (CRI `sandboxer = "shim"`):
        # then it outlives its containers and only the Sandbox API ends it
        self.owned_by_sandbox_api = False
        # what the Sandbox API's pod gives each container (a pause container's pod has
        # kubelet's files and CRI's sysctls on its sandbox container instead)
        self.gifts = PodGifts()
        # containers deleted lately: an OOM kill the guest reports after containerd
        # deleted the task (its exit and the OOM event race) still reaches containerd
        self.recently_deleted: collections.deque[str] = collections.deque(maxlen=64)
        self.monitor: Monitor | None = None
        self.watchers = PodWatchers(self, report)
        self.ports: PortMirror | None = None  # CRI port-forward, when the pod has a netns
        self._lock = asyncio.Lock()  # the sandbox and the set of containers change one at a time

    # -- what the pod is ---------------------------------------------------------------
    @property
    def pid(self) -> int:
        """QEMU's pid: what the Task API reports for every process of the pod."""
        return self.sandbox.pid if self.sandbox is not None else 0

    @property
    def agent(self) -> GuestAgent:
        if self.sandbox is None or self.sandbox.agent is None:
            raise NotReady("the sandbox VM is not running")
        return self.sandbox.agent

    def container(self, container_id: str) -> Container:
        check_identifier("container id", container_id)
        found = self.containers.get(container_id)
        if found is None:
            raise NotFound(f"container {container_id} not found")
        return found

    def knows(self, container_id: str) -> bool:
        """A container of the pod, or one deleted lately."""
        return container_id in self.containers or container_id in self.recently_deleted

    def use_monitor(self, monitor: Monitor) -> None:
        """Serve the monitor socket while the VM runs."""
        self.monitor = monitor

    def owned_by(self, labels: dict[str, str]) -> None:
        """containerd's Sandbox API made this pod: it outlives its containers, and its
        metrics carry the CRI pod's labels (kata-monitor's)."""
        self.owned_by_sandbox_api = True
        if self.monitor is not None:
            self.monitor.pod_metadata = dict(labels)

    def give_containers(self, gifts: PodGifts) -> None:
        """Give every later container these files and sysctls where it sets none itself:
        what a pod without a pause container has for its hostname, resolver and
        sysctls."""
        self.gifts = gifts

    # -- the VM ------------------------------------------------------------------------
    async def boot(self, settings: PodSettings) -> Sandbox:
        """Boot the pod's VM (for its first container, or for the Sandbox API)."""
        sandbox = Sandbox(self.namespace, settings.sandbox_id, settings.config)
        size = settings.vm_size()
        log.info("starting sandbox VM", sandbox=settings.sandbox_id,
                 config=settings.config.source, vcpus=size.vcpus, memory_mib=size.memory_mib)
        try:
            await sandbox.start(
                netns=settings.netns,
                hostname=settings.hostname,
                dns=list(settings.dns),
                cgroup_path=settings.cgroup_path,
                sandbox_pidns=settings.sandbox_pidns,
                size=(size.vcpus, size.memory_mib),
            )
        except (NetnsRefused, ConfinementError, CgroupError):
            raise  # the edge gives them their own codes
        except Exception as exc:
            # the vmm layer's errors (QEMU died, agent silent) name their cause
            raise StartFailed(f"cannot start the sandbox VM: {exc}") from exc
        self.sandbox = sandbox
        if self.monitor is not None:
            self.monitor.observe_agent(sandbox.agent)
            try:
                await self.monitor.open(sandbox)
            except OSError as exc:  # the pod runs without it; the log says why
                log.error("cannot serve the monitor socket", error=str(exc), sandbox=sandbox.id)
        self.watchers.start(sandbox)
        if settings.netns is not None and settings.config.runtime.port_forward:
            self.ports = PortMirror(settings.netns, sandbox.agent, sandbox.id)
            self.ports.start()
        return sandbox

    async def stop(self) -> None:
        """Stop the pod's VM with its containers' guest side (StopSandbox, a dead VM, the
        last container's delete)."""
        async with self._lock:
            await self._stop()

    async def _stop(self) -> None:
        self.watchers.stop_death_and_console()
        if self.monitor is not None:
            await self.monitor.close()
        if self.ports is not None:
            await self.ports.stop()
            self.ports = None
        if self.sandbox is not None:
            # the OOM watcher goes after DestroySandbox's answer: an OOM event the guest
            # sent before it (a kill reported with the last container's exit) is read first
            await self.sandbox.stop()
            self.sandbox = None
        self.watchers.stop_oom()

    async def on_death(self, sandbox: Sandbox, reason: str) -> None:
        """The VM died: every process exits 255, the VM's remains are torn down."""
        for container in list(self.containers.values()):
            for process in container.processes():
                if not process.exited.is_set():
                    process.close_io()
                self.exited(process, DEAD_VM_STATUS)
        self._report(PodDied(reason))
        async with self._lock:
            if self.sandbox is sandbox:
                await self._stop()

    # -- containers --------------------------------------------------------------------
    async def create_container(
        self,
        container_id: str,
        bundle: str,
        spec: dict[str, Any],
        stdio: Stdio,
        rootfs: list[MountSpec],
        options: tuple[str, bytes],
    ) -> Container:
        """Create a container in the guest, booting the VM for the first one."""
        check_identifier("container id", container_id)
        async with self._lock:
            if container_id in self.containers:
                raise AlreadyExists(f"container {container_id} already exists")
            first = self.sandbox is None
            if first and self.owned_by_sandbox_api:
                raise NotReady("the pod's sandbox is stopped")
            if first:
                await self.boot(settings_from_spec(self.namespace, container_id, spec, options))
            elif (spec.get("annotations") or {}).get(CONTAINER_TYPE_ANNOTATION) == "sandbox":
                assert self.sandbox is not None
                raise AlreadyExists(f"sandbox {self.sandbox.id} already runs")
            container = Container(
                id=container_id,
                bundle=bundle,
                spec=spec,
                init=Process(container_id, "", self.pid, stdio),
                rootfs=rootfs,
                limits=sizing.from_spec(spec),
            )
            try:
                await self._create_in_guest(container)
            except BaseException:
                if first:
                    await self._stop()
                raise
            self.containers[container_id] = container
        log.info("container created", container=container_id, pid=self.pid)
        return container

    async def _create_in_guest(self, container: Container) -> None:
        sandbox = self.sandbox
        assert sandbox is not None and sandbox.agent is not None
        try:
            root = container.spec.get("root") or {}
            guest_root = sandbox.add_container(
                container.id, container.bundle, container.rootfs, str(root.get("path") or "rootfs")
            )
            guest_spec = container.guest_spec(guest_root, sandbox, self.gifts)
        except MountError as exc:
            sandbox.remove_container(container.id)
            raise InvalidRequest(
                f"cannot mount the container rootfs: {exc} (check the rootfs mounts the "
                "Create request names: the snapshot's type, source and options)"
            ) from None
        except (OSError, SandboxError) as exc:
            sandbox.remove_container(container.id)
            raise HostFailure(f"cannot prepare container rootfs: {exc}") from exc
        except SpecError:
            sandbox.remove_container(container.id)
            raise
        try:
            await sandbox.agent.create_container(
                container.id,
                guest_spec,
                sandbox_pidns=container.shares_pod_pidns,
                timeout=sandbox.config.runtime.create_container_timeout,
                storages=container.storages,
            )
        except BaseException:
            sandbox.remove_container(container.id)
            raise
        process_io.attach(container.init, sandbox.agent)

    async def delete_container(self, container: Container) -> None:
        """Remove a container from the guest and the host; the pod's end with its last one
        (unless the Sandbox API owns the pod)."""
        async with self._lock:
            for exec_process in container.execs.values():
                exec_process.close_io()
            sandbox = self.sandbox
            if sandbox is not None and sandbox.agent is not None and not (
                self._removed_by_sandbox_end(container)
            ):
                try:
                    await sandbox.agent.remove_container(container.id)
                except ttrpc.TTRPCError as exc:
                    log.warning(
                        "agent RemoveContainer failed", container=container.id, error=str(exc)
                    )
            if sandbox is not None:
                sandbox.remove_container(container.id)
            del self.containers[container.id]
            self.recently_deleted.append(container.id)
            if not self.containers and not self.owned_by_sandbox_api:
                await self._stop()

    def _removed_by_sandbox_end(self, container: Container) -> bool:
        """Whether the guest side of this container can be left to DestroySandbox: it is
        the pod's last, so the sandbox stops next (one guest call fewer at every pod's
        end)."""
        return not self.owned_by_sandbox_api and set(self.containers) == {container.id}

    async def delete_all(self) -> None:
        """Delete every container (the daemon's shutdown); a failure is logged, not raised."""
        for container in list(self.containers.values()):
            try:
                await self.delete_container(container)
            except Exception as exc:
                log.error("cleanup at shutdown failed", container=container.id, error=str(exc))

    # -- processes ---------------------------------------------------------------------
    async def start(self, container: Container, process: Process) -> bool:
        """Start an init or exec in the guest; False if it exited meanwhile (the VM died)."""
        async with process.lock:  # the whole call: see process.py
            process.require("start", State.CREATED)
            agent = self.agent
            calls = []
            if process.exec_id:
                await agent.exec_process(container.id, process.exec_id, process.spec)
            else:
                calls.append(agent.start_container(container.id))
            if not process.stdio.stdin and not process.stdio.terminal:
                # no stdin from containerd: the guest's pipe must not stay open forever. An
                # init's exists since its create, so this goes along with the start; an
                # exec's only once ExecProcess returned.
                calls.append(_close_stdin(agent, process))
            await asyncio.gather(*calls)
            if not process.move(State.RUNNING):  # the VM died meanwhile: the exit is known
                return False
            # only now does the agent know an exec: reading earlier would get NOT_FOUND
            process_io.start(process)
            process.waiter = asyncio.get_running_loop().create_task(self.wait_for_exit(process))
            return True

    def add_exec(self, container: Container, exec_id: str, spec_json: bytes,
                 stdio: Stdio) -> Process:
        """A new exec process of the container, created (not yet started)."""
        check_identifier("exec id", exec_id)
        if exec_id in container.execs:
            raise AlreadyExists(f"exec {exec_id} already exists")
        if container.init.state in (State.STOPPED, State.DELETED):
            raise NotReady(
                f"cannot exec in container {container.id}: it is {container.init.state.word}"
            )
        try:
            process_spec = process_to_kata(json.loads(spec_json or b"{}"))
        except (ValueError, SpecError) as exc:
            raise InvalidRequest(f"exec spec: {exc}") from None
        process = Process(container.id, exec_id, self.pid, stdio, spec=process_spec)
        process_io.attach(process, self.agent)
        container.execs[exec_id] = process
        return process

    async def kill(self, container: Container, process: Process, signal: int, all: bool) -> None:
        """Signal a process (all: every process of the container)."""
        async with process.lock:  # the whole call: see process.py
            if process.state in (State.STOPPED, State.DELETED):
                raise NotFound(f"{process.name} has already exited")
            if process.state == State.CREATED:
                # never started: nothing of it runs in the guest; it is gone all the same
                self.exited(process, 128 + (signal or SIGKILL))
                return
            exec_id = "" if (all and not process.exec_id) else process.agent_exec_id
            try:
                await self.agent.signal_process(container.id, exec_id, signal)
            except ttrpc.TTRPCError as exc:
                if not self._kill_ends_pod(container, process, signal, exc):
                    raise
                # a guest that does not answer must not keep its pod from being deleted:
                # the VM's end kills everything in it, and every process exits 255
                log.warning(
                    "the agent did not take the pod's SIGKILL: stopping the pod's VM",
                    container=container.id,
                    error=exc.message,
                )
                await self.stop()

    def _kill_ends_pod(
        self, container: Container, process: Process, signal: int, exc: ttrpc.TTRPCError
    ) -> bool:
        """Whether a Kill the agent gave no answer to may end the pod instead: SIGKILL to
        the init of its sandbox (pause) container, or of its only container, in a pod the
        Task API owns."""
        if exc.code not in UNREACHABLE or signal != SIGKILL or process.exec_id:
            return False
        if self.owned_by_sandbox_api:
            return False
        return container.is_sandbox or set(self.containers) == {container.id}

    async def delete_process(self, container: Container, process: Process) -> None:
        """Delete a process that exited or never ran; its container with its init."""
        async with process.lock:  # the whole call: see process.py
            if process.state in (State.RUNNING, State.PAUSED):
                raise ProcessStateError(
                    f"cannot delete {process.name}: it is {process.state.word}; kill it first"
                )
            process.require("delete", State.CREATED, State.STOPPED)
            self.exited(process, NEVER_STARTED_STATUS)  # a no-op unless it never ran
            process.move(State.DELETED)
            process.close_io()
            if process.exec_id:
                del container.execs[process.exec_id]
            else:
                await self.delete_container(container)

    async def resize_pty(self, process: Process, width: int, height: int) -> None:
        if not process.stdio.terminal:
            raise NotReady("the process has no terminal")
        await self.agent.resize_tty(process.container_id, process.agent_exec_id, height, width)

    async def freeze(self, container: Container, *, pause: bool) -> None:
        """Pause (freeze) or resume a container in the guest."""
        if pause:
            action, before, after = "pause", State.RUNNING, State.PAUSED
        else:
            action, before, after = "resume", State.PAUSED, State.RUNNING
        init = container.init
        async with init.lock:
            init.require(action, before)
            if pause:
                await self.agent.pause_container(container.id)
            else:
                await self.agent.resume_container(container.id)
            if not init.move(after):
                raise ProcessStateError(f"{init.name} exited during {action}")

    async def stats(self, container: Container) -> Any:
        """The container's cgroup figures in the guest (agent StatsContainerResponse)."""
        return await self.agent.stats_container(container.id)

    async def update(self, container: Container, resources_json: bytes) -> None:
        """Apply new OCI resources (JSON) to the container in the guest; the VM grows
        first when the pod's containers now ask for more than it has."""
        try:
            raw = json.loads(resources_json or b"{}")
            resources = resources_to_kata(raw)
            limits = sizing.from_spec({"linux": {"resources": raw}})
        except (ValueError, SpecError) as exc:
            raise InvalidRequest(f"resources: {exc}") from None
        await self._grow_for(container, limits)
        await self.agent.update_container(container.id, resources)
        container.limits = limits

    async def _grow_for(self, container: Container, limits: sizing.PodLimits) -> None:
        sandbox = self.sandbox
        if sandbox is None or sandbox.vm is None:
            raise NotReady("the sandbox VM is not running")
        others = [c.limits for c in self.containers.values() if c is not container]
        hypervisor = sandbox.config.hypervisor
        want = sizing.wanted(hypervisor, sizing.total([*others, limits]))
        if want.vcpus <= sandbox.vm.vcpus and want.memory_mib <= sandbox.vm.memory_mib:
            return
        max_vcpus, max_memory = hypervisor.maxima()
        if want.vcpus > max_vcpus or want.memory_mib > max_memory:
            raise TooBig(
                f"the pod's containers ask for {want.vcpus} vCPUs and {want.memory_mib} MiB "
                f"with this update; its VM can grow to {max_vcpus} vCPUs and {max_memory} MiB "
                "([hypervisor.qemu] default_maxvcpus, default_maxmemory; 0: the host's)"
            )
        try:
            await sandbox.grow(max(want.vcpus, sandbox.vm.vcpus),
                               max(want.memory_mib, sandbox.vm.memory_mib))
        except ResizeError as exc:
            raise TooBig(f"the pod's VM cannot grow: {exc}") from None

    # -- exits -------------------------------------------------------------------------
    async def wait_for_exit(self, process: Process) -> None:
        """Ask the agent for the exit, let output drain, then report it."""
        status = 255
        try:
            status = await self.agent.wait_process(process.container_id, process.agent_exec_id)
        except (ttrpc.TTRPCError, NotReady) as exc:
            if await self.watchers.vm_died_meanwhile(exc):
                return  # the death watcher gave every process its exit, with the reason
            log.warning(
                "lost the process: the agent did not report its exit",
                container=process.container_id,
                exec_id=process.exec_id,
                error=str(exc),
            )
        for stream in await process_io.drain(process, IO_DRAIN_TIMEOUT):
            log.warning("output did not end after the exit", stream=stream)
        self.exited(process, status)

    def exited(self, process: Process, status: int) -> None:
        """Record an exit and report it, once."""
        if process.set_exited(status):
            self._report(ProcessExited(process))


async def _close_stdin(agent: GuestAgent, process: Process) -> None:
    with contextlib.suppress(ttrpc.TTRPCError):
        await agent.close_stdin(process.container_id, process.agent_exec_id)
