"""containerd 2.x's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`): a pod, no pause.

With CRI's `sandboxer = "shim"`, containerd asks the shim itself for the pod:
CreateSandbox (the pod's CRI config and netns), StartSandbox (boot the VM),
WaitSandbox (returns when the pod stops), SandboxStatus and Platform (before
each app container), StopSandbox, ShutdownSandbox (then the shim exits). App
containers then arrive through the Task API like any grouped container. Both
doors lead to the daemon's one Pod (shim.pod.pod).
"""

from __future__ import annotations

import asyncio
import os
import platform
from typing import Any

import structlog

from protos.containerd.runtime.sandbox.v1 import sandbox_pb2 as api
from protos.containerd.types import platform_pb2
from shim.config import load_config
from shim.handoff import OPTIONS_ENV
from shim.paths import check_identifier
from shim.pod import cri
from shim.pod.events import DEAD_VM_STATUS, PodDied, PodEvent
from shim.pod.pod import Pod, PodSettings
from shim.task_service.errors import at_the_edge
from shim.task_service.service import runtime_options
from shim.task_service.timestamps import timestamp
from ttrpc import Code, TTRPCError

log = structlog.get_logger(__name__)

READY, NOT_READY = "SANDBOX_READY", "SANDBOX_NOTREADY"
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}


def start_options() -> tuple[str, bytes]:
    """(config_path, config_body) from the runtime options containerd gave `start` on
    its stdin, which `start` passes on hex-encoded in the environment (popped here)."""
    raw = os.environ.pop(OPTIONS_ENV, "")
    if not raw:
        return "", b""
    from google.protobuf.any_pb2 import Any as AnyMessage
    from google.protobuf.message import DecodeError

    try:
        wrapped = AnyMessage.FromString(bytes.fromhex(raw))
    except (ValueError, DecodeError):
        log.warning("runtime options from start are not an Any; ignored")
        return "", b""
    return runtime_options(wrapped)


@at_the_edge
class SandboxService:
    """The Sandbox API of the daemon's pod."""

    def __init__(self, pod: Pod, shutdown: asyncio.Event) -> None:
        self.pod = pod
        self._shutdown = shutdown
        self._options = start_options()
        self._asked: cri.CriPod | None = None  # what CreateSandbox asked for
        self._failed: str = ""  # the id of a CreateSandbox that failed
        self._life = cri.PodLife()
        self._lock = asyncio.Lock()

    def on_pod_event(self, event: PodEvent) -> None:
        if isinstance(event, PodDied):
            self._life.stop(DEAD_VM_STATUS)

    def _known(self, sandbox_id: str) -> PodSettings:
        check_identifier("sandbox id", sandbox_id)
        if self._asked is None or self._asked.settings.sandbox_id != sandbox_id:
            raise TTRPCError(Code.NOT_FOUND, f"sandbox {sandbox_id} not found")
        return self._asked.settings

    def _running(self) -> bool:
        sandbox = self.pod.sandbox
        return (sandbox is not None and self._asked is not None
                and sandbox.id == self._asked.settings.sandbox_id
                and not self._life.stopped.is_set())

    async def CreateSandbox(self, request: api.CreateSandboxRequest, context) -> Any:
        check_identifier("sandbox id", request.sandbox_id)
        async with self._lock:
            if self._asked is not None or self.pod.sandbox is not None:
                raise TTRPCError(Code.ALREADY_EXISTS, "this shim already serves a sandbox")
            try:
                asked = cri.cri_pod(request, self.pod.namespace, load_config(*self._options))
            except BaseException:
                # containerd shuts the sandbox down next: then this daemon must end
                self._failed = request.sandbox_id
                raise
            self._asked = asked
            self.pod.owned_by(asked.labels)
        log.info("sandbox created", sandbox=request.sandbox_id, netns=request.netns_path,
                 **asked.labels)
        return api.CreateSandboxResponse()

    async def StartSandbox(self, request: api.StartSandboxRequest, context) -> Any:
        settings = self._known(request.sandbox_id)
        async with self._lock:
            if self._life.stopped.is_set():
                raise TTRPCError(Code.FAILED_PRECONDITION,
                                 f"sandbox {settings.sandbox_id} was stopped")
            if self.pod.sandbox is None:
                sandbox = await self.pod.boot(settings)
                self._life.started()
                assert self._asked is not None
                self.pod.give_containers(self._asked.gifts(sandbox.state_dir / "pod"))
        return api.StartSandboxResponse(pid=self.pod.pid,
                                        created_at=timestamp(self._life.created_ns))

    async def Platform(self, request: api.PlatformRequest, context) -> Any:
        self._known(request.sandbox_id)
        machine = platform.machine()
        return api.PlatformResponse(
            platform=platform_pb2.Platform(os="linux", architecture=_GO_ARCH.get(machine, machine))
        )

    async def StopSandbox(self, request: api.StopSandboxRequest, context) -> Any:
        settings = self._known(request.sandbox_id)
        async with self._lock:
            self._life.stop(0)  # asked for: not a crash
            await self.pod.stop()
        log.info("sandbox stopped", sandbox=settings.sandbox_id)
        return api.StopSandboxResponse()

    async def WaitSandbox(self, request: api.WaitSandboxRequest, context) -> Any:
        self._known(request.sandbox_id)
        await self._life.stopped.wait()
        return api.WaitSandboxResponse(exit_status=self._life.exit_status,
                                       exited_at=timestamp(self._life.exited_ns))

    async def SandboxStatus(self, request: api.SandboxStatusRequest, context) -> Any:
        settings = self._known(request.sandbox_id)
        running = self._running()
        response = api.SandboxStatusResponse(
            sandbox_id=settings.sandbox_id,
            pid=self.pod.pid if running else 0,
            state=READY if running else NOT_READY,
        )
        if self._life.created_ns:
            response.created_at.CopyFrom(timestamp(self._life.created_ns))
        if self._life.exited_ns:
            response.exited_at.CopyFrom(timestamp(self._life.exited_ns))
        if request.verbose and running and self.pod.sandbox is not None:
            response.info["qemu_pid"] = str(self.pod.pid)
            response.info["state_dir"] = str(self.pod.sandbox.state_dir)
        return response

    async def PingSandbox(self, request: api.PingRequest, context) -> Any:
        settings = self._known(request.sandbox_id)
        if not self._running():
            raise TTRPCError(Code.UNAVAILABLE, f"sandbox {settings.sandbox_id} is not running")
        return api.PingResponse()

    async def ShutdownSandbox(self, request: api.ShutdownSandboxRequest, context) -> Any:
        if self._asked is None and self._failed and request.sandbox_id == self._failed:
            log.info("sandbox never created: shutting down", sandbox=self._failed)
            self._shutdown.set()  # nothing to stop, nobody else to serve
            return api.ShutdownSandboxResponse()
        settings = self._known(request.sandbox_id)
        async with self._lock:
            self._life.stop(self._life.exit_status)
            await self.pod.stop()
        log.info("sandbox shut down", sandbox=settings.sandbox_id)
        # the daemon ends once containerd has hung up (shim.daemon.serve): containerd
        # fails RemovePodSandbox when the connection closes before this reply
        self._shutdown.set()
        return api.ShutdownSandboxResponse()

    async def SandboxMetrics(self, request: api.SandboxMetricsRequest, context) -> Any:
        self._known(request.sandbox_id)
        raise TTRPCError(Code.UNIMPLEMENTED, "SandboxMetrics: pykata reports metrics per task "
                         "(Task.Stats); no sandbox-level metrics yet")
