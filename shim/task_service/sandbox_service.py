"""containerd 2.x's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`): a pod, no pause.

With CRI's `sandboxer = "shim"`, containerd asks the shim itself for the pod:
CreateSandbox (the pod's CRI config and netns), StartSandbox (boot the VM),
WaitSandbox (returns when the pod stops), SandboxStatus and Platform (before
each app container), StopSandbox, ShutdownSandbox (then the shim exits). App
containers then arrive through the Task API like any grouped container. Both
doors lead to the same place: the VM is booted and stopped by TaskService's
boot_sandbox/stop_sandbox, so there is one sandbox layer behind them.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from protos.containerd.runtime.sandbox.v1 import sandbox_pb2 as api
from protos.containerd.types import platform_pb2
from protos.kubernetes import cri_pod_pb2
from shim.config import load_config
from shim.handoff import OPTIONS_ENV
from shim.paths import check_identifier
from shim.sandbox.cgroup import sandbox_cgroup_path
from shim.task_service.errors import at_the_edge
from shim.task_service.service import DEAD_VM_STATUS, runtime_options
from shim.task_service.timestamps import timestamp
from ttrpc import Code, TTRPCError

log = structlog.get_logger(__name__)

POD_CONFIG_TYPE = "runtime.v1.PodSandboxConfig"
READY, NOT_READY = "SANDBOX_READY", "SANDBOX_NOTREADY"
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}


def pod_cgroup_path(cgroup_parent: str, namespace: str, sandbox_id: str) -> str:
    """The sandbox's cgroup under kubelet's pod cgroup, named as containerd names the pause
    container's (`parent:cri-containerd:id` for a systemd slice, `parent/id` otherwise)."""
    if not cgroup_parent:
        return sandbox_cgroup_path(None, default=f"/pykata/{namespace}/{sandbox_id}")
    if cgroup_parent.endswith(".slice"):
        return sandbox_cgroup_path(f"{cgroup_parent}:cri-containerd:{sandbox_id}", default="")
    return sandbox_cgroup_path(f"{cgroup_parent.rstrip('/')}/{sandbox_id}", default="")


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


def pod_config(options: Any) -> cri_pod_pb2.PodSandboxConfig:
    """The CRI PodSandboxConfig in CreateSandboxRequest.options (empty when absent)."""
    if options is None or not options.value:
        return cri_pod_pb2.PodSandboxConfig()
    if options.type_url.removeprefix("type.googleapis.com/") != POD_CONFIG_TYPE:
        raise TTRPCError(
            Code.INVALID_ARGUMENT,
            f"CreateSandbox options are {options.type_url!r}, expected {POD_CONFIG_TYPE}",
        )
    try:
        return cri_pod_pb2.PodSandboxConfig.FromString(options.value)
    except Exception as exc:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"bad PodSandboxConfig: {exc}") from None


def shares_pid_namespace(options: Any, config: cri_pod_pb2.PodSandboxConfig) -> bool:
    """Whether the pod's containers share one pid namespace, which the agent then makes
    (no pause container holds it here).

    containerd gives every container of a pod whose pid mode is not CONTAINER the
    sandbox's pid namespace by path (POD; NODE too, the path that names the node's for
    a pause container): they share the pod's own in the guest, never the guest's.
    Without a CRI config (no options) nothing says so.
    """
    if options is None or not (options.type_url or options.value):
        return False
    return config.linux.security_context.namespace_options.pid != cri_pod_pb2.CONTAINER


def dns_lines(config: cri_pod_pb2.PodSandboxConfig) -> list[str]:
    """resolv.conf lines for the agent from the pod's DNSConfig."""
    dns = config.dns_config
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return lines


def write_pod_files(folder: Path, hostname: str, dns: list[str]) -> dict[str, str]:
    """/etc/hostname, /etc/hosts and (with DNS) /etc/resolv.conf for the pod's containers.

    containerd 2.x's shim sandboxer makes none of the files its pause-container
    sandboxer makes under CRI's sandbox dir, so the containers of such a pod
    would have no resolver: the shim writes them and binds them into each one.
    """
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    files = {"/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"}
    if hostname:
        files["/etc/hostname"] = f"{hostname}\n"
        files["/etc/hosts"] += f"127.0.1.1\t{hostname}\n"
    if dns:
        files["/etc/resolv.conf"] = "\n".join(dns) + "\n"
    made = {}
    for destination, text in files.items():
        path = folder / os.path.basename(destination)
        path.write_text(text)
        made[destination] = str(path)
    return made


@dataclass
class _Pod:
    """What CreateSandbox asked for, and how the pod's life went."""

    id: str
    config: Any
    netns: str | None
    hostname: str
    dns: list[str]
    cgroup_path: str | None = None
    shared_pidns: bool = False
    created_ns: int = 0
    exited_ns: int = 0
    exit_status: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


@at_the_edge
class SandboxService:
    """The Sandbox API of one pod, over the TaskService that owns its VM."""

    def __init__(self, tasks: Any, shutdown: asyncio.Event) -> None:
        self.tasks = tasks
        self._shutdown = shutdown
        self._options = start_options()
        self._pod: _Pod | None = None
        self._lock = asyncio.Lock()

    def _known(self, sandbox_id: str) -> _Pod:
        check_identifier("sandbox id", sandbox_id)
        if self._pod is None or self._pod.id != sandbox_id:
            raise TTRPCError(Code.NOT_FOUND, f"sandbox {sandbox_id} not found")
        return self._pod

    def _running(self, pod: _Pod) -> bool:
        sandbox = self.tasks.sandbox
        return sandbox is not None and sandbox.id == pod.id and not pod.stopped.is_set()

    async def CreateSandbox(self, request: api.CreateSandboxRequest, context) -> Any:
        check_identifier("sandbox id", request.sandbox_id)
        async with self._lock:
            if self._pod is not None or self.tasks.sandbox is not None:
                raise TTRPCError(Code.ALREADY_EXISTS, "this shim already serves a sandbox")
            cri = pod_config(request.options)
            config = load_config(*self._options)
            cgroup_path = pod_cgroup_path(
                cri.linux.cgroup_parent, self.tasks.namespace, request.sandbox_id
            )
            self._pod = _Pod(
                id=request.sandbox_id,
                config=config,
                netns=request.netns_path or None,
                hostname=cri.hostname,
                dns=dns_lines(cri),
                cgroup_path=cgroup_path,
                shared_pidns=shares_pid_namespace(request.options, cri),
            )
            self.tasks.owned_by_sandbox_api(  # kata-monitor's labels for the pod's metrics
                {
                    "cri_name": cri.metadata.name,
                    "cri_namespace": cri.metadata.namespace,
                    "cri_uid": cri.metadata.uid,
                }
            )
        log.info("sandbox created", sandbox=request.sandbox_id, netns=request.netns_path,
                 pod=cri.metadata.name, pod_namespace=cri.metadata.namespace)
        return api.CreateSandboxResponse()

    async def StartSandbox(self, request: api.StartSandboxRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        async with self._lock:
            if pod.stopped.is_set():
                raise TTRPCError(Code.FAILED_PRECONDITION, f"sandbox {pod.id} was stopped")
            if self.tasks.sandbox is None:
                await self.tasks.boot_sandbox(
                    pod.id,
                    pod.config,
                    netns=pod.netns,
                    hostname=pod.hostname,
                    dns=pod.dns,
                    cgroup_path=pod.cgroup_path,
                    sandbox_pidns=pod.shared_pidns,
                )
                pod.created_ns = time.time_ns()
                self.tasks.bind_pod_files(
                    write_pod_files(self.tasks.sandbox.state_dir / "pod", pod.hostname, pod.dns)
                )
                self.tasks.on_pod_death(lambda reason: self._mark_stopped(pod, DEAD_VM_STATUS))
        return api.StartSandboxResponse(pid=self.tasks.sandbox.pid,
                                        created_at=timestamp(pod.created_ns))

    def _mark_stopped(self, pod: _Pod, status: int) -> None:
        if not pod.stopped.is_set():
            pod.exit_status = status
            pod.exited_ns = time.time_ns()
            pod.stopped.set()

    async def Platform(self, request: api.PlatformRequest, context) -> Any:
        self._known(request.sandbox_id)
        machine = platform.machine()
        return api.PlatformResponse(
            platform=platform_pb2.Platform(os="linux", architecture=_GO_ARCH.get(machine, machine))
        )

    async def StopSandbox(self, request: api.StopSandboxRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        async with self._lock:
            if not pod.stopped.is_set():
                self._mark_stopped(pod, 0)  # asked for: not a crash
            await self.tasks.stop_sandbox()
        log.info("sandbox stopped", sandbox=pod.id)
        return api.StopSandboxResponse()

    async def WaitSandbox(self, request: api.WaitSandboxRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        await pod.stopped.wait()
        return api.WaitSandboxResponse(exit_status=pod.exit_status,
                                       exited_at=timestamp(pod.exited_ns))

    async def SandboxStatus(self, request: api.SandboxStatusRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        running = self._running(pod)
        response = api.SandboxStatusResponse(
            sandbox_id=pod.id,
            pid=self.tasks.sandbox.pid if running else 0,
            state=READY if running else NOT_READY,
        )
        if pod.created_ns:
            response.created_at.CopyFrom(timestamp(pod.created_ns))
        if pod.exited_ns:
            response.exited_at.CopyFrom(timestamp(pod.exited_ns))
        if request.verbose and running:
            response.info["qemu_pid"] = str(self.tasks.sandbox.pid)
            response.info["state_dir"] = str(self.tasks.sandbox.state_dir)
        return response

    async def PingSandbox(self, request: api.PingRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        if not self._running(pod):
            raise TTRPCError(Code.UNAVAILABLE, f"sandbox {pod.id} is not running")
        return api.PingResponse()

    async def ShutdownSandbox(self, request: api.ShutdownSandboxRequest, context) -> Any:
        pod = self._known(request.sandbox_id)
        async with self._lock:
            self._mark_stopped(pod, pod.exit_status)
            await self.tasks.stop_sandbox()
        log.info("sandbox shut down", sandbox=pod.id)
        # the daemon ends once containerd has hung up (shim.daemon.serve): containerd
        # fails RemovePodSandbox when the connection closes before this reply
        self._shutdown.set()
        return api.ShutdownSandboxResponse()

    async def SandboxMetrics(self, request: api.SandboxMetricsRequest, context) -> Any:
        self._known(request.sandbox_id)
        raise TTRPCError(Code.UNIMPLEMENTED, "SandboxMetrics: pykata reports metrics per task "
                         "(Task.Stats); no sandbox-level metrics yet")
