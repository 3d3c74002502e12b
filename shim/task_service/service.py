"""containerd.task.v2.Task: the Task API a pykata shim daemon serves.

One daemon serves one sandbox (pod): its first container boots the VM, the
others join it. Every call validates ids first; errors carry the gRPC code
containerd expects (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION...).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

import structlog
from google.protobuf import empty_pb2

import ttrpc
from protos.containerd.events import task_pb2 as events
from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions
from protos.containerd.task.v2 import shim_pb2 as api
from protos.containerd.types.task import task_pb2 as task_types
from protos.kata import agent_pb2
from shim.agent_client import BadAnswer
from shim.config import Config, load_config
from shim.netns.nsenter import NetnsRefused
from shim.oci import SpecError, process_to_kata, resources_to_kata
from shim.paths import CONTAINER_TYPE_ANNOTATION, check_identifier, group_of
from shim.pod.container import Container
from shim.sandbox.cgroup import CgroupError, sandbox_cgroup_path
from shim.sandbox.mounts import MountError, MountSpec
from shim.sandbox.sandbox import Sandbox, SandboxError, network_namespace
from shim.task_service import oom
from shim.task_service.errors import at_the_edge
from shim.task_service.events import EventPublisher
from shim.task_service.process import (
    NEVER_STARTED_STATUS,
    Process,
    ProcessStateError,
    State,
    Stdio,
)
from shim.task_service.stdio import CHUNK, InputCopier, OutputCopier
from shim.vmm import console_log
from shim.vmm.confinement import ConfinementError

log = structlog.get_logger(__name__)
Code = ttrpc.Code
TTRPCError = ttrpc.TTRPCError
EMPTY = empty_pb2.Empty()
IO_DRAIN_TIMEOUT = 10.0  # after an exit, how long output may still arrive
# Every agent call made for a containerd request has a deadline: this one, or the
# agent client's per-method default (shim.agent_client.METHOD_TIMEOUTS). Only the long
# polls have none, and none outlives the pod (stopping it closes the agent): ReadStdout/
# ReadStderr end with their process (close_io, or IO_DRAIN_TIMEOUT after its exit),
# WaitProcess with the exit, GetOOMEvent with the pod (its watcher is cancelled).
AGENT_TIMEOUT = 60.0
REMOVE_TIMEOUT = 30.0  # RemoveContainer: the guest is given 10 s to stop what is left
MAX_SPEC_BYTES = 2 << 20  # an agent message (a ttrpc frame) holds at most 4 MiB
DEAD_VM_STATUS = 255  # the exit status of a process whose VM died under it
SIGKILL = 9
UNREACHABLE = frozenset({Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE})  # the agent gave no answer
DEATH_GRACE = 2.0  # an agent call failed: how long the VM's death may take to be seen
SHIM_VERSION = "pykata 0.1.0"


def _read_spec(bundle: str) -> dict[str, Any]:
    """The bundle's config.json, checked for what the shim relies on before any VM exists."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"no config.json in bundle {bundle}") from None
    except OSError as exc:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"cannot read {path}: {exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise TTRPCError(
            Code.INVALID_ARGUMENT,
            f"{path} is larger than {MAX_SPEC_BYTES >> 20} MiB: the spec must reach the guest "
            "in one agent message; trim its env, annotations or mounts",
        )
    try:
        spec = json.loads(data)
    except ValueError as exc:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise TTRPCError(Code.INVALID_ARGUMENT, f"{path} must hold a JSON object")
    for key in ("process", "root"):
        if not isinstance(spec.get(key), dict):
            raise TTRPCError(
                Code.INVALID_ARGUMENT, f"{path} has no {key!r} object: not a container spec"
            )
    return spec


def runtime_options(options: Any) -> tuple[str, bytes]:
    """(config_path, config_body) of runtimeoptions.v1.Options in Create's options Any.

    CRI sends it for runtimes other than runc; containerd 1.7+ may fill
    config_body (the TOML text) instead of config_path. Absent or of another
    type (ctr sends none, or runc's options): nothing.
    """
    if options is None or not options.value:
        return "", b""
    if not options.type_url.endswith("runtimeoptions.v1.Options"):
        return "", b""
    parsed = runtimeoptions.Options.FromString(options.value)
    return parsed.config_path, parsed.config_body


@at_the_edge
class TaskService:
    """The Task API, bound to one sandbox."""

    def __init__(self, namespace: str, publisher: EventPublisher, shutdown: asyncio.Event) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self._shutdown = shutdown
        self.sandbox: Sandbox | None = None
        # True when containerd's Sandbox API made the pod (CRI `sandboxer = "shim"`):
        # then the pod outlives its containers and only ShutdownSandbox ends it
        self.sandbox_api_owns_pod = False
        # destination -> host file, bound into every container that has no such mount:
        # what kubelet's files under CRI's sandbox dir are to a pause-container pod
        self.pod_files: dict[str, str] = {}
        self.containers: dict[str, Container] = {}
        # containers deleted lately: an OOM kill the guest reports after containerd
        # deleted the task (its exit and the OOM event race) still reaches containerd
        self._deleted: collections.deque[str] = collections.deque(maxlen=64)
        self._lock = asyncio.Lock()  # Create/Delete change the sandbox one at a time
        self._oom_watcher: asyncio.Task[None] | None = None
        self._death_watcher: asyncio.Task[None] | None = None
        self._console_watcher: asyncio.Task[None] | None = None  # keeps console.log capped
        # called with the reason when the pod's VM dies (the Sandbox API's WaitSandbox)
        self.death_listeners: list[Any] = []
        # the pod's monitor socket (shim.task_service.monitor_service.SandboxMonitor)
        self.monitor: Any = None

    # -- what the Sandbox API door and the daemon ask of the pod -------------------
    def owned_by_sandbox_api(self, labels: dict[str, str]) -> None:
        """containerd's Sandbox API made this pod: it outlives its containers, and its
        metrics carry the CRI pod's labels."""
        self.sandbox_api_owns_pod = True
        if self.monitor is not None:
            self.monitor.pod_metadata = dict(labels)

    def on_pod_death(self, listener: Callable[[str], None]) -> None:
        """Call listener(reason) when the pod's VM dies."""
        self.death_listeners.append(listener)

    def bind_pod_files(self, files: dict[str, str]) -> None:
        """Bind these host files (destination -> file) into every later container that has
        no mount there: the pod's hostname, hosts and resolver without a pause container."""
        self.pod_files = dict(files)

    async def delete_all(self) -> None:
        """Delete every container (the daemon's shutdown); a failure is logged, not raised."""
        for container in list(self.containers.values()):
            try:
                await self._delete_container(container)
            except Exception as exc:
                log.error("cleanup at shutdown failed", container=container.id, error=str(exc))

    # -- helpers ---------------------------------------------------------------
    def _container(self, container_id: str) -> Container:
        check_identifier("container id", container_id)
        found = self.containers.get(container_id)
        if found is None:
            raise TTRPCError(Code.NOT_FOUND, f"container {container_id} not found")
        return found

    def _agent(self) -> Any:
        if self.sandbox is None or self.sandbox.agent is None:
            raise TTRPCError(Code.FAILED_PRECONDITION, "the sandbox VM is not running")
        return self.sandbox.agent

    def _pid(self) -> int:
        return self.sandbox.pid if self.sandbox is not None else 0

    # -- Create ------------------------------------------------------------------
    async def Create(self, request: api.CreateTaskRequest, context) -> api.CreateTaskResponse:
        check_identifier("container id", request.id)
        if request.checkpoint or request.parent_checkpoint:
            raise TTRPCError(Code.UNIMPLEMENTED, "pykata cannot restore from a checkpoint")
        async with self._lock:
            if request.id in self.containers:
                raise TTRPCError(Code.ALREADY_EXISTS, f"container {request.id} already exists")
            spec = _read_spec(request.bundle)
            stdio = Stdio(request.stdin, request.stdout, request.stderr, request.terminal)
            first = self.sandbox is None
            if first and self.sandbox_api_owns_pod:
                raise TTRPCError(Code.FAILED_PRECONDITION, "the pod's sandbox is stopped")
            if first:
                await self._start_sandbox(request, spec)
            elif (spec.get("annotations") or {}).get(CONTAINER_TYPE_ANNOTATION) == "sandbox":
                raise TTRPCError(Code.ALREADY_EXISTS, f"sandbox {self.sandbox.id} already runs")
            container = Container(
                id=request.id,
                bundle=request.bundle,
                spec=spec,
                init=Process(request.id, "", self._pid(), stdio),
                rootfs=list(request.rootfs),
            )
            try:
                await self._create_in_guest(container, request)
            except BaseException:
                if first:
                    await self._stop_sandbox()
                raise
            self.containers[request.id] = container
        self.publisher.publish(
            "/tasks/create",
            events.TaskCreate(
                container_id=request.id,
                bundle=request.bundle,
                rootfs=request.rootfs,
                io=events.TaskIO(
                    stdin=request.stdin,
                    stdout=request.stdout,
                    stderr=request.stderr,
                    terminal=request.terminal,
                ),
                pid=self._pid(),
            ),
        )
        log.info("container created", container=request.id, pid=self._pid())
        return api.CreateTaskResponse(pid=self._pid())

    async def _start_sandbox(self, request: api.CreateTaskRequest, spec: dict[str, Any]) -> None:
        config: Config = load_config(*runtime_options(request.options))
        sandbox_id = group_of(spec, request.id)
        cgroup_path = sandbox_cgroup_path(
            (spec.get("linux") or {}).get("cgroupsPath"),
            default=f"/pykata/{self.namespace}/{sandbox_id}",
        )
        await self.boot_sandbox(
            sandbox_id,
            config,
            netns=network_namespace(spec),
            hostname=spec.get("hostname", "") or "",
            cgroup_path=cgroup_path,
        )

    async def boot_sandbox(
        self,
        sandbox_id: str,
        config: Config,
        *,
        netns: str | None,
        hostname: str = "",
        dns: list[str] | None = None,
        cgroup_path: str | None = None,
        sandbox_pidns: bool = False,
    ) -> Sandbox:
        """Boot the pod's VM (for its first container, or for the Sandbox API)."""
        sandbox = Sandbox(self.namespace, sandbox_id, config)
        log.info("starting sandbox VM", sandbox=sandbox_id, config=config.source)
        try:
            await sandbox.start(netns=netns, hostname=hostname, dns=dns, cgroup_path=cgroup_path,
                                sandbox_pidns=sandbox_pidns)
        except (NetnsRefused, ConfinementError, CgroupError):
            raise  # shim.task_service.errors gives them their codes
        except (SandboxError, MountError, OSError) as exc:
            raise TTRPCError(Code.UNAVAILABLE, f"cannot start the sandbox VM: {exc}") from exc
        except Exception as exc:
            # the vmm layer's own errors (QEMU died, agent silent) name their cause
            raise TTRPCError(Code.UNAVAILABLE, f"cannot start the sandbox VM: {exc}") from exc
        self.sandbox = sandbox
        if self.monitor is not None:
            await self._open_monitor(sandbox)
        loop = asyncio.get_running_loop()
        self._oom_watcher = loop.create_task(self._watch_oom(sandbox))
        self._death_watcher = loop.create_task(self._watch_death(sandbox))
        self._console_watcher = loop.create_task(console_log.keep_capped(sandbox.vm.console_log))
        return sandbox

    async def _open_monitor(self, sandbox: Sandbox) -> None:
        sandbox.vm.agent.observer = self.monitor.rpc.observe_agent  # agent call durations
        try:
            await self.monitor.open(sandbox)
        except OSError as exc:  # the pod runs without it; the log says why
            log.error("cannot serve the monitor socket", error=str(exc), sandbox=sandbox.id)

    async def _watch_death(self, sandbox: Sandbox) -> None:
        """Deaths flow up: QEMU or virtiofsd gone (a crash, a kill, a guest panic).

        Agent calls in flight fail at once with the reason, every process of the
        pod gets exit status 255 (/tasks/exit once each), and the VM's remains
        are torn down; containerd then deletes the tasks as usual.
        """
        reason = await sandbox.vm.wait_death()
        if reason is None or self.sandbox is not sandbox:
            return
        log.error("the pod's VM died", sandbox=sandbox.id, reason=reason)
        await sandbox.vm.agent.close(f"the pod's VM died: {reason}")
        for container in list(self.containers.values()):
            for process in (container.init, *container.execs.values()):
                if not process.exited.is_set():
                    process.close_io()
                self._exited(process, DEAD_VM_STATUS)
        for listener in self.death_listeners:
            listener(reason)
        async with self._lock:
            if self.sandbox is sandbox:
                self._death_watcher = None  # this task: not to be cancelled by the stop
                await self._stop_sandbox()

    async def stop_sandbox(self) -> None:
        """Stop the pod's VM (Sandbox API: StopSandbox), with its containers' guest side."""
        async with self._lock:
            await self._stop_sandbox()

    async def _stop_sandbox(self) -> None:
        for watcher in (self._death_watcher, self._console_watcher):
            if watcher is not None:
                watcher.cancel()
        self._death_watcher = self._console_watcher = None
        if self.monitor is not None:
            await self.monitor.close()
        if self.sandbox is not None:
            # the OOM watcher goes after DestroySandbox's answer: an OOM event the guest
            # sent before it (a kill reported with the last container's exit) is read first
            await self.sandbox.stop()
            self.sandbox = None
        if self._oom_watcher is not None:
            self._oom_watcher.cancel()
            self._oom_watcher = None

    async def _watch_oom(self, sandbox: Sandbox) -> None:
        """Keep the agent's GetOOMEvent long poll open; publish /tasks/oom for each kill.

        The guest chooses how often it answers: the poll is paced and a container's
        events are passed on at most once a second (shim.task_service.oom)."""
        pacer, gate = oom.PollPacer(), oom.OomGate()
        failures = 0
        while self.sandbox is sandbox and sandbox.agent is not None:
            await asyncio.sleep(pacer.delay())
            try:
                event = await sandbox.agent.GetOOMEvent(agent_pb2.GetOOMEventRequest())
            except ttrpc.TTRPCError as exc:
                failures += 1
                log.debug("OOM event poll failed", error=str(exc), failures=failures)
                await asyncio.sleep(min(failures, 10) * 0.5)
                continue
            failures = 0
            if event.container_id not in self.containers and (
                event.container_id not in self._deleted
            ):
                gate.ignore_unknown(event.container_id)
            elif gate.allow(event.container_id):
                gate.retain([*self.containers, *self._deleted])
                log.info("container hit its memory limit", container=event.container_id)
                self.publisher.publish(
                    "/tasks/oom", events.TaskOOM(container_id=event.container_id)
                )

    async def _create_in_guest(self, container: Container, request: api.CreateTaskRequest) -> None:
        sandbox = self.sandbox
        assert sandbox is not None
        rootfs = [MountSpec(m.type, m.source, tuple(m.options)) for m in request.rootfs]
        try:
            guest_root = sandbox.add_container(container.id, container.bundle, rootfs)
            guest_spec = container.guest_spec(guest_root, sandbox, self.pod_files)
        except MountError as exc:
            sandbox.remove_container(container.id)
            raise TTRPCError(
                Code.INVALID_ARGUMENT,
                f"cannot mount the container rootfs: {exc} (check the rootfs mounts the "
                "Create request names: the snapshot's type, source and options)",
            ) from None
        except (OSError, SandboxError) as exc:
            sandbox.remove_container(container.id)
            raise TTRPCError(Code.INTERNAL, f"cannot prepare container rootfs: {exc}") from exc
        except SpecError:
            sandbox.remove_container(container.id)
            raise
        try:
            await sandbox.agent.CreateContainer(
                agent_pb2.CreateContainerRequest(
                    container_id=container.id,
                    exec_id=container.id,
                    OCI=guest_spec,
                    sandbox_pidns=container.shares_pod_pidns,
                ),
                timeout=sandbox.config.runtime.create_container_timeout,
            )
        except BaseException:
            sandbox.remove_container(container.id)
            raise
        self._attach_io(container.init)

    # -- stdio -------------------------------------------------------------------
    def _attach_io(self, process: Process) -> None:
        agent = self._agent()
        cid, eid = process.container_id, process.agent_exec_id

        def reader(method: str):
            call = getattr(agent, method)

            async def read() -> bytes:
                answer = await call(
                    agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=CHUNK)
                )
                return answer.data

            return read

        copiers = []
        if process.stdio.stdout:
            copiers.append(OutputCopier("stdout", process.stdio.stdout, reader("ReadStdout")))
        if process.stdio.stderr and not process.stdio.terminal:
            copiers.append(OutputCopier("stderr", process.stdio.stderr, reader("ReadStderr")))
        process.output_copiers = copiers
        if process.stdio.stdin:

            async def write(data: bytes) -> None:
                view = memoryview(data)
                while view:
                    chunk = bytes(view[:CHUNK])
                    answer = await agent.WriteStdin(
                        agent_pb2.WriteStreamRequest(container_id=cid, exec_id=eid, data=chunk)
                    )
                    # 0 would resend forever; more than sent answers no write of ours
                    if not 0 < answer.len <= len(chunk):
                        raise BadAnswer(
                            f"the agent answered WriteStdin of {process.name} with "
                            f"len={answer.len} for {len(chunk)} bytes sent"
                        )
                    view = view[answer.len :]

            async def close() -> None:
                await agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id=cid, exec_id=eid))

            process.stdin_copier = InputCopier(process.stdio.stdin, write, close)

    def _start_io(self, process: Process) -> None:
        for copier in process.output_copiers:
            copier.start()
        if process.stdin_copier is not None:
            process.stdin_copier.start()

    async def _wait_for_exit(self, process: Process) -> None:
        """Ask the agent for the exit, let output drain, then publish /tasks/exit."""
        status = 255
        try:
            answer = await self._agent().WaitProcess(
                agent_pb2.WaitProcessRequest(
                    container_id=process.container_id, exec_id=process.agent_exec_id
                )
            )
            status = answer.status
        except ttrpc.TTRPCError as exc:
            if exc.code == Code.UNAVAILABLE and await self._vm_died_meanwhile():
                return  # the death watcher gave every process its exit, with the reason
            log.warning(
                "lost the process: the agent did not report its exit",
                container=process.container_id,
                exec_id=process.exec_id,
                error=str(exc),
            )
        for copier in process.output_copiers:
            if not await copier.wait(IO_DRAIN_TIMEOUT):
                log.warning("output did not end after the exit", stream=copier.name)
        if process.stdin_copier is not None:
            process.stdin_copier.stop()
        self._exited(process, status)

    async def _vm_died_meanwhile(self) -> bool:
        """The agent's connection broke: is the VM dying? (its watcher then owns the exits;
        the socket's end may reach us before QEMU's exit does)."""
        watcher = self._death_watcher
        if watcher is None:
            return False
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(watcher), DEATH_GRACE)
        return watcher.done() and not watcher.cancelled()

    def _exited(self, process: Process, status: int) -> None:
        """Record an exit and tell containerd (/tasks/exit), once."""
        if not process.set_exited(status):
            return
        self.publisher.publish(
            "/tasks/exit",
            events.TaskExit(
                container_id=process.container_id,
                id=process.exec_id or process.container_id,
                pid=process.pid,
                exit_status=process.exit_status,
                exited_at=process.exited_at(),
            ),
        )

    # -- Start / Wait / State ------------------------------------------------------
    async def Start(self, request: api.StartRequest, context) -> api.StartResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        async with process.lock:  # the whole call: see process.py
            process.require("start", State.CREATED)
            return await self._start(container, process)

    async def _start(self, container: Container, process: Process) -> api.StartResponse:
        agent = self._agent()
        calls = []
        if process.exec_id:
            await agent.ExecProcess(
                agent_pb2.ExecProcessRequest(
                    container_id=container.id, exec_id=process.exec_id, process=process.spec
                ),
                timeout=AGENT_TIMEOUT,
            )
        else:
            calls.append(
                agent.StartContainer(
                    agent_pb2.StartContainerRequest(container_id=container.id),
                    timeout=AGENT_TIMEOUT,
                )
            )
        if not process.stdio.stdin and not process.stdio.terminal:
            # no stdin from containerd: the guest's pipe must not stay open forever. An
            # init's exists since its create, so this goes along with the start; an
            # exec's only once ExecProcess returned.
            calls.append(self._close_stdin(agent, container, process))
        await asyncio.gather(*calls)
        if not process.move(State.RUNNING):  # the VM died meanwhile: the exit is known
            return api.StartResponse(pid=process.pid)
        # only now does the agent know an exec: reading earlier would get NOT_FOUND
        self._start_io(process)
        process.waiter = asyncio.get_running_loop().create_task(self._wait_for_exit(process))
        if process.exec_id:
            self.publisher.publish(
                "/tasks/exec-started",
                events.TaskExecStarted(
                    container_id=container.id, exec_id=process.exec_id, pid=process.pid
                ),
            )
        else:
            self.publisher.publish(
                "/tasks/start", events.TaskStart(container_id=container.id, pid=process.pid)
            )
        return api.StartResponse(pid=process.pid)

    @staticmethod
    async def _close_stdin(agent: Any, container: Container, process: Process) -> None:
        with contextlib.suppress(ttrpc.TTRPCError):
            await agent.CloseStdin(
                agent_pb2.CloseStdinRequest(
                    container_id=container.id, exec_id=process.agent_exec_id
                ),
                timeout=AGENT_TIMEOUT,
            )

    async def Wait(self, request: api.WaitRequest, context) -> api.WaitResponse:
        process = self._container(request.id).process(request.exec_id)
        await process.exited.wait()
        return api.WaitResponse(exit_status=process.exit_status, exited_at=process.exited_at())

    async def State(self, request: api.StateRequest, context) -> api.StateResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        return api.StateResponse(
            id=container.id,
            bundle=container.bundle,
            pid=process.pid,
            status=process.state.status,
            stdin=process.stdio.stdin,
            stdout=process.stdio.stdout,
            stderr=process.stdio.stderr,
            terminal=process.stdio.terminal,
            exit_status=process.exit_status,
            exited_at=process.exited_at(),
            exec_id=process.exec_id,
        )

    # -- Kill / Exec / IO ----------------------------------------------------------
    async def Kill(self, request: api.KillRequest, context) -> empty_pb2.Empty:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        async with process.lock:  # the whole call: see process.py
            if process.state in (State.STOPPED, State.DELETED):
                raise TTRPCError(Code.NOT_FOUND, f"{process.name} has already exited")
            if process.state == State.CREATED:
                # never started: nothing of it runs in the guest; it is gone all the same
                self._exited(process, 128 + (request.signal or 9))
                return EMPTY
            try:
                await self._agent().SignalProcess(
                    agent_pb2.SignalProcessRequest(
                        container_id=container.id,
                        exec_id=(
                            "" if (request.all and not process.exec_id) else process.agent_exec_id
                        ),
                        signal=request.signal,
                    ),
                    timeout=AGENT_TIMEOUT,
                )
            except TTRPCError as exc:
                if not self._kill_ends_pod(container, process, request, exc):
                    raise
                # a guest that does not answer must not keep its pod from being deleted:
                # the VM's end kills everything in it, and every process exits 255
                log.warning(
                    "the agent did not take the pod's SIGKILL: stopping the pod's VM",
                    container=container.id,
                    error=exc.message,
                )
                await self.stop_sandbox()
        return EMPTY

    def _kill_ends_pod(
        self, container: Container, process: Process, request: api.KillRequest, exc: TTRPCError
    ) -> bool:
        """Whether a Kill the agent gave no answer to may end the pod instead: SIGKILL to
        the init of its sandbox (pause) container, or of its only container, in a pod the
        Task API owns."""
        if exc.code not in UNREACHABLE or request.signal != SIGKILL or process.exec_id:
            return False
        if self.sandbox_api_owns_pod:
            return False
        annotations = container.spec.get("annotations") or {}
        return annotations.get(CONTAINER_TYPE_ANNOTATION) == "sandbox" or set(
            self.containers
        ) == {container.id}

    async def Exec(self, request: api.ExecProcessRequest, context) -> empty_pb2.Empty:
        container = self._container(request.id)
        check_identifier("exec id", request.exec_id)
        if request.exec_id in container.execs:
            raise TTRPCError(Code.ALREADY_EXISTS, f"exec {request.exec_id} already exists")
        if container.init.state in (State.STOPPED, State.DELETED):
            raise TTRPCError(
                Code.FAILED_PRECONDITION,
                f"cannot exec in container {container.id}: it is {container.init.state.word}",
            )
        try:
            spec = json.loads(request.spec.value or b"{}")
            process_spec = process_to_kata(spec)
        except (ValueError, SpecError) as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"exec spec: {exc}") from None
        stdio = Stdio(request.stdin, request.stdout, request.stderr, request.terminal)
        process = Process(container.id, request.exec_id, self._pid(), stdio, spec=process_spec)
        self._attach_io(process)
        container.execs[request.exec_id] = process
        self.publisher.publish(
            "/tasks/exec-added",
            events.TaskExecAdded(container_id=container.id, exec_id=request.exec_id),
        )
        return EMPTY

    async def ResizePty(self, request: api.ResizePtyRequest, context) -> empty_pb2.Empty:
        process = self._container(request.id).process(request.exec_id)
        if not process.stdio.terminal:
            raise TTRPCError(Code.FAILED_PRECONDITION, "the process has no terminal")
        await self._agent().TtyWinResize(
            agent_pb2.TtyWinResizeRequest(
                container_id=request.id,
                exec_id=process.agent_exec_id,
                row=request.height,
                column=request.width,
            ),
            timeout=AGENT_TIMEOUT,
        )
        return EMPTY

    async def CloseIO(self, request: api.CloseIORequest, context) -> empty_pb2.Empty:
        process = self._container(request.id).process(request.exec_id)
        if request.stdin and process.stdin_copier is not None:
            process.stdin_copier.close_input()
        return EMPTY

    # -- Delete / Pids / Connect / Shutdown ----------------------------------------
    async def Delete(self, request: api.DeleteRequest, context) -> api.DeleteResponse:
        container = self._container(request.id)
        process = container.process(request.exec_id)
        async with process.lock:  # the whole call: see process.py
            if process.state in (State.RUNNING, State.PAUSED):
                raise ProcessStateError(
                    f"cannot delete {process.name}: it is {process.state.word}; kill it first"
                )
            process.require("delete", State.CREATED, State.STOPPED)
            self._exited(process, NEVER_STARTED_STATUS)  # a no-op unless it never ran
            process.move(State.DELETED)
            process.close_io()
            if request.exec_id:
                del container.execs[request.exec_id]
            else:
                await self._delete_container(container)
        self.publisher.publish(
            "/tasks/delete",
            events.TaskDelete(
                container_id=container.id,
                id=request.exec_id or container.id,
                pid=process.pid,
                exit_status=process.exit_status,
                exited_at=process.exited_at(),
            ),
        )
        return api.DeleteResponse(
            pid=process.pid, exit_status=process.exit_status, exited_at=process.exited_at()
        )

    async def _delete_container(self, container: Container) -> None:
        async with self._lock:
            for exec_process in container.execs.values():
                exec_process.close_io()
            if self.sandbox is not None and self.sandbox.agent is not None and not (
                self._removed_by_sandbox_end(container)
            ):
                try:
                    await self.sandbox.agent.RemoveContainer(
                        agent_pb2.RemoveContainerRequest(container_id=container.id, timeout=10),
                        timeout=REMOVE_TIMEOUT,
                    )
                except ttrpc.TTRPCError as exc:
                    log.warning(
                        "agent RemoveContainer failed", container=container.id, error=str(exc)
                    )
            if self.sandbox is not None:
                self.sandbox.remove_container(container.id)
            del self.containers[container.id]
            self._deleted.append(container.id)
            if not self.containers and not self.sandbox_api_owns_pod:
                await self._stop_sandbox()

    def _removed_by_sandbox_end(self, container: Container) -> bool:
        """Whether the guest side of this container can be left to DestroySandbox: it is
        the pod's last, so the sandbox stops next (one guest call fewer at every pod's
        end)."""
        return not self.sandbox_api_owns_pod and set(self.containers) == {container.id}

    async def Pids(self, request: api.PidsRequest, context) -> api.PidsResponse:
        container = self._container(request.id)
        processes = [task_types.ProcessInfo(pid=container.init.pid)]
        return api.PidsResponse(processes=processes)

    async def Connect(self, request: api.ConnectRequest, context) -> api.ConnectResponse:
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=self._pid(), version=SHIM_VERSION)

    async def Shutdown(self, request: api.ShutdownRequest, context) -> empty_pb2.Empty:
        if not request.now and (self.containers or self.sandbox_api_owns_pod):
            # a Sandbox API pod ends with ShutdownSandbox; containerd 2.1.2+ sends
            # this after each of its containers' Delete
            return EMPTY
        if request.now:
            for container in list(self.containers.values()):
                with contextlib.suppress(Exception):
                    await self._delete_container(container)
        self._shutdown.set()
        return EMPTY

    # -- Pause / Resume / Stats / Update ---------------------------------------------
    async def Pause(self, request: api.PauseRequest, context) -> empty_pb2.Empty:
        await self._freeze(request.id, pause=True)
        return EMPTY

    async def Resume(self, request: api.ResumeRequest, context) -> empty_pb2.Empty:
        await self._freeze(request.id, pause=False)
        return EMPTY

    async def _freeze(self, container_id: str, *, pause: bool) -> None:
        """Pause (freeze) or resume a container in the guest, and say so to containerd."""
        container = self._container(container_id)
        if pause:
            action, before, after = "pause", State.RUNNING, State.PAUSED
        else:
            action, before, after = "resume", State.PAUSED, State.RUNNING
        init = container.init
        async with init.lock:
            init.require(action, before)
            agent = self._agent()
            if pause:
                await agent.PauseContainer(
                    agent_pb2.PauseContainerRequest(container_id=container.id),
                    timeout=AGENT_TIMEOUT,
                )
            else:
                await agent.ResumeContainer(
                    agent_pb2.ResumeContainerRequest(container_id=container.id),
                    timeout=AGENT_TIMEOUT,
                )
            if not init.move(after):
                raise ProcessStateError(f"{init.name} exited during {action}")
        if pause:
            self.publisher.publish("/tasks/paused", events.TaskPaused(container_id=container.id))
        else:
            self.publisher.publish("/tasks/resumed", events.TaskResumed(container_id=container.id))

    async def Stats(self, request: api.StatsRequest, context) -> api.StatsResponse:
        container = self._container(request.id)
        from shim.task_service.metrics import metrics_from_agent, pack_metrics

        answer = await self._agent().StatsContainer(
            agent_pb2.StatsContainerRequest(container_id=container.id), timeout=AGENT_TIMEOUT
        )
        return api.StatsResponse(stats=pack_metrics(metrics_from_agent(answer)))

    async def Update(self, request: api.UpdateTaskRequest, context) -> empty_pb2.Empty:
        container = self._container(request.id)
        try:
            resources = resources_to_kata(json.loads(request.resources.value or b"{}"))
        except (ValueError, SpecError) as exc:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"resources: {exc}") from None
        await self._agent().UpdateContainer(
            agent_pb2.UpdateContainerRequest(container_id=container.id, resources=resources),
            timeout=AGENT_TIMEOUT,
        )
        return EMPTY

    # Checkpoint is left out on purpose: the ttrpc server answers UNIMPLEMENTED.
