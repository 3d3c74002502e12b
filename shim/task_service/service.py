"""containerd.task.v2.Task: the Task API door of a pykata shim daemon.

Each call is translated into a call of the daemon's one Pod (shim.pod.pod) and its
answer back into containerd's reply and events; the pod's own reports (exits, OOM
kills) become /tasks/exit and /tasks/oom. Domain errors get their gRPC codes at the
edge (shim.task_service.errors).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog
from google.protobuf import empty_pb2

import ttrpc
from protos.containerd.events import task_pb2 as events
from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions
from protos.containerd.task.v2 import shim_pb2 as api
from protos.containerd.types.task import task_pb2 as task_types
from shim.paths import check_identifier
from shim.pod.bundle import read_container_spec
from shim.pod.events import OutOfMemory, PodEvent, ProcessExited
from shim.pod.pod import Pod
from shim.pod.process import Process, Stdio
from shim.sandbox.mounts import MountSpec
from shim.task_service.errors import at_the_edge

log = structlog.get_logger(__name__)
EMPTY = empty_pb2.Empty()
SHIM_VERSION = "pykata 0.1.0"


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
    """The Task API, over the daemon's pod."""

    def __init__(self, pod: Pod, publisher: Any, shutdown: asyncio.Event) -> None:
        self.pod = pod
        self.publisher = publisher
        self._shutdown = shutdown

    def on_pod_event(self, event: PodEvent) -> None:
        """What the pod reports on its own, as containerd's events."""
        if isinstance(event, ProcessExited):
            process = event.process
            self.publisher.publish("/tasks/exit", events.TaskExit(
                container_id=process.container_id,
                id=process.exec_id or process.container_id,
                pid=process.pid,
                exit_status=process.exit_status,
                exited_at=process.exited_at(),
            ))
        elif isinstance(event, OutOfMemory):
            self.publisher.publish("/tasks/oom", events.TaskOOM(container_id=event.container_id))

    def _process(self, container_id: str, exec_id: str) -> Process:
        return self.pod.container(container_id).process(exec_id)

    async def Create(self, request: api.CreateTaskRequest, context) -> api.CreateTaskResponse:
        if request.checkpoint or request.parent_checkpoint:
            raise ttrpc.TTRPCError(ttrpc.Code.UNIMPLEMENTED,
                                   "pykata cannot restore from a checkpoint")
        check_identifier("container id", request.id)  # before its bundle is read
        container = await self.pod.create_container(
            request.id,
            request.bundle,
            read_container_spec(request.bundle),
            Stdio(request.stdin, request.stdout, request.stderr, request.terminal),
            [MountSpec(m.type, m.source, tuple(m.options)) for m in request.rootfs],
            runtime_options(request.options),
        )
        io = events.TaskIO(stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                           terminal=request.terminal)
        self.publisher.publish("/tasks/create", events.TaskCreate(
            container_id=container.id, bundle=request.bundle, rootfs=request.rootfs, io=io,
            pid=self.pod.pid,
        ))
        return api.CreateTaskResponse(pid=self.pod.pid)

    async def Start(self, request: api.StartRequest, context) -> api.StartResponse:
        container = self.pod.container(request.id)
        process = container.process(request.exec_id)
        if not await self.pod.start(container, process):
            return api.StartResponse(pid=process.pid)  # exited meanwhile: no start event
        if process.exec_id:
            self.publisher.publish("/tasks/exec-started", events.TaskExecStarted(
                container_id=container.id, exec_id=process.exec_id, pid=process.pid
            ))
        else:
            self.publisher.publish(
                "/tasks/start", events.TaskStart(container_id=container.id, pid=process.pid)
            )
        return api.StartResponse(pid=process.pid)

    async def Wait(self, request: api.WaitRequest, context) -> api.WaitResponse:
        process = self._process(request.id, request.exec_id)
        await process.exited.wait()
        return api.WaitResponse(exit_status=process.exit_status, exited_at=process.exited_at())

    async def State(self, request: api.StateRequest, context) -> api.StateResponse:
        container = self.pod.container(request.id)
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

    async def Kill(self, request: api.KillRequest, context) -> empty_pb2.Empty:
        container = self.pod.container(request.id)
        process = container.process(request.exec_id)
        await self.pod.kill(container, process, request.signal, request.all)
        return EMPTY

    async def Exec(self, request: api.ExecProcessRequest, context) -> empty_pb2.Empty:
        container = self.pod.container(request.id)
        stdio = Stdio(request.stdin, request.stdout, request.stderr, request.terminal)
        self.pod.add_exec(container, request.exec_id, request.spec.value, stdio)
        self.publisher.publish("/tasks/exec-added", events.TaskExecAdded(
            container_id=container.id, exec_id=request.exec_id
        ))
        return EMPTY

    async def ResizePty(self, request: api.ResizePtyRequest, context) -> empty_pb2.Empty:
        process = self._process(request.id, request.exec_id)
        await self.pod.resize_pty(process, request.width, request.height)
        return EMPTY

    async def CloseIO(self, request: api.CloseIORequest, context) -> empty_pb2.Empty:
        process = self._process(request.id, request.exec_id)
        if request.stdin and process.stdin_copier is not None:
            process.stdin_copier.close_input()
        return EMPTY

    async def Delete(self, request: api.DeleteRequest, context) -> api.DeleteResponse:
        container = self.pod.container(request.id)
        process = container.process(request.exec_id)
        await self.pod.delete_process(container, process)
        self.publisher.publish("/tasks/delete", events.TaskDelete(
            container_id=container.id,
            id=request.exec_id or container.id,
            pid=process.pid,
            exit_status=process.exit_status,
            exited_at=process.exited_at(),
        ))
        return api.DeleteResponse(
            pid=process.pid, exit_status=process.exit_status, exited_at=process.exited_at()
        )

    async def Pids(self, request: api.PidsRequest, context) -> api.PidsResponse:
        container = self.pod.container(request.id)
        return api.PidsResponse(processes=[task_types.ProcessInfo(pid=container.init.pid)])

    async def Connect(self, request: api.ConnectRequest, context) -> api.ConnectResponse:
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=self.pod.pid,
                                   version=SHIM_VERSION)

    async def Shutdown(self, request: api.ShutdownRequest, context) -> empty_pb2.Empty:
        if not request.now and (self.pod.containers or self.pod.owned_by_sandbox_api):
            # a Sandbox API pod ends with ShutdownSandbox; containerd 2.1.2+ sends
            # this after each of its containers' Delete
            return EMPTY
        if request.now:
            await self.pod.delete_all()
        self._shutdown.set()
        return EMPTY

    async def Pause(self, request: api.PauseRequest, context) -> empty_pb2.Empty:
        container = self.pod.container(request.id)
        await self.pod.freeze(container, pause=True)
        self.publisher.publish("/tasks/paused", events.TaskPaused(container_id=container.id))
        return EMPTY

    async def Resume(self, request: api.ResumeRequest, context) -> empty_pb2.Empty:
        container = self.pod.container(request.id)
        await self.pod.freeze(container, pause=False)
        self.publisher.publish("/tasks/resumed", events.TaskResumed(container_id=container.id))
        return EMPTY

    async def Stats(self, request: api.StatsRequest, context) -> api.StatsResponse:
        from shim.task_service.metrics import metrics_from_agent, pack_metrics

        answer = await self.pod.stats(self.pod.container(request.id))
        return api.StatsResponse(stats=pack_metrics(metrics_from_agent(answer)))

    async def Update(self, request: api.UpdateTaskRequest, context) -> empty_pb2.Empty:
        await self.pod.update(self.pod.container(request.id), request.resources.value)
        return EMPTY

    # Checkpoint is left out on purpose: the ttrpc server answers UNIMPLEMENTED.
