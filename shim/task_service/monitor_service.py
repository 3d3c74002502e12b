"""The pod's monitor socket: Kata's shim management routes, HTTP on a Unix socket.

`/run/pykata/<namespace>/<sandbox>/shim-monitor.sock` serves, as Kata's
`shim-monitor.sock` does: `GET /agent-url`, `GET /metrics` (Prometheus text:
the shim, QEMU and virtiofsd from /proc, RPC durations, the pod's overhead and
the guest's own page from the agent's GetMetrics, as read for the previous scrape),
`GET /direct-volume/stats`,
`POST /direct-volume/resize`, and `GET|PUT /iptables` and `/ip6tables` (the
guest's rules). It shares the daemon's event loop; /proc reading and rendering
run in a worker thread, agent calls have short deadlines.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, NamedTuple

import structlog

import ttrpc
from pykata_common.exposition import CONTENT_TYPE
from shim.guest_agent import GuestAgent, timeout_of
from shim.monitor.http import MonitorServer, Request
from shim.monitor.overhead import PodOverhead
from shim.monitor.page import metrics_page, sandbox_labels
from shim.monitor.rpc_metrics import RpcMetrics
from shim.paths import MONITOR_SOCKET
from shim.vmm import procs

if TYPE_CHECKING:
    from shim.pod.pod import Pod
    from shim.sandbox.sandbox import Sandbox

log = structlog.get_logger(__name__)
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
CRI_LABEL_ANNOTATIONS = {
    "cri_name": "io.kubernetes.cri.sandbox-name",
    "cri_namespace": "io.kubernetes.cri.sandbox-namespace",
    "cri_uid": "io.kubernetes.cri.sandbox-uid",
}
# how an agent's gRPC status reads over HTTP
HTTP_STATUS = {
    ttrpc.Code.INVALID_ARGUMENT: 400,
    ttrpc.Code.NOT_FOUND: 404,
    ttrpc.Code.FAILED_PRECONDITION: 409,
    ttrpc.Code.UNIMPLEMENTED: 501,
    ttrpc.Code.UNAVAILABLE: 503,
    ttrpc.Code.DEADLINE_EXCEEDED: 504,
}

Reply = tuple[int, str, bytes | str]


class GuestReading(NamedTuple):
    page: str | None  # the agent's GetMetrics text (None: it gave none)
    cpu_ns: int  # the containers' CPU time in the guest
    memory_bytes: int  # and their memory now


def _error(exc: ttrpc.TTRPCError) -> Reply:
    return HTTP_STATUS.get(exc.code, 500), TEXT, f"{exc.code.name}: {exc.message}\n"


class SandboxMonitor:
    """The monitor socket of the daemon's one pod, open while its VM runs."""

    def __init__(self, pod: Pod, rpc: RpcMetrics) -> None:
        self.pod = pod
        self.rpc = rpc
        self.overhead = PodOverhead()
        # CRI's pod metadata when the Sandbox API gave it (else read from annotations)
        self.pod_metadata: dict[str, str] = {}
        self._server: MonitorServer | None = None
        self._guest: GuestReading | None = None  # the agent's page and the containers' usage
        self._refresh: asyncio.Task[GuestReading] | None = None

    def observe_agent(self, agent: GuestAgent) -> None:
        """Time every call the pod makes to its agent (/metrics' RPC durations)."""
        agent.observer = self.rpc.observe_agent

    async def open(self, sandbox: Sandbox) -> None:
        """Serve the routes on the sandbox's monitor socket."""
        server = MonitorServer()
        server.route("/agent-url", self._agent_url)
        server.route("/metrics", self._metrics)
        server.route("/direct-volume/stats", self._volume_stats)
        server.route("/direct-volume/resize", self._volume_resize, methods=("POST",))
        server.route("/iptables", self._iptables_v4, methods=("GET", "PUT"))
        server.route("/ip6tables", self._iptables_v6, methods=("GET", "PUT"))
        path = str(sandbox.state_dir / MONITOR_SOCKET)
        await server.start(path)
        self._server = server
        self.overhead.sample(self._pids(sandbox))  # so that the first scrape has a baseline
        log.info("monitor socket serving", path=path)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.close()
        if self._refresh is not None:
            self._refresh.cancel()
        self._refresh = self._guest = None

    # -- helpers -----------------------------------------------------------------
    def _sandbox(self) -> Sandbox:
        sandbox = self.pod.sandbox
        if sandbox is None or sandbox.vm is None:
            raise ttrpc.TTRPCError(ttrpc.Code.UNAVAILABLE, "the pod's VM is not running")
        return sandbox

    def _agent(self) -> GuestAgent:
        agent = self._sandbox().agent
        assert agent is not None
        return agent

    def _processes(self, sandbox: Sandbox) -> list[tuple[str, int | None, int | None]]:
        from shim.vmm.hostcaps import virtiofsd_serving_pid

        vm = sandbox.vm
        virtiofsd = virtiofsd_serving_pid(vm.virtiofsd.pid) if vm.virtiofsd is not None else None
        return [
            ("kata_shim", os.getpid(), None),
            ("kata_hypervisor", vm.pid, procs.start_time(vm.pid)),
            ("kata_virtiofsd", virtiofsd, None),
        ]

    def _pids(self, sandbox: Sandbox) -> list[int]:
        return [pid for _, pid, _ in self._processes(sandbox) if pid]

    def _labels(self, sandbox: Sandbox) -> dict[str, str]:
        found = dict(self.pod_metadata)
        for container in self.pod.containers.values():
            annotations = container.spec.get("annotations") or {}
            for label, key in CRI_LABEL_ANNOTATIONS.items():
                if annotations.get(key):
                    found.setdefault(label, annotations[key])
        return sandbox_labels(sandbox.id, **found)

    async def _read_guest(self, sandbox: Sandbox) -> GuestReading:
        """Ask the agent for its page (GetMetrics) and the containers' usage, at once."""
        page, usage = await asyncio.gather(self._agent_page(sandbox), self._guest_usage(sandbox))
        self._guest = GuestReading(page, *usage)
        return self._guest

    async def _agent_page(self, sandbox: Sandbox) -> str | None:
        try:
            return await sandbox.agent.get_metrics()
        except ttrpc.TTRPCError as exc:
            log.debug("the agent gave no metrics", error=str(exc))
            return None

    async def _guest_reading(self, sandbox: Sandbox) -> GuestReading:
        """The guest's figures: those read for the previous scrape, while a new reading
        starts for the next one (the guest's Python takes 15-60 ms under TCG for its
        page, the host's part 2 ms: a scrape should not wait on the guest). The first
        scrape waits for its reading."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._read_guest(sandbox))
        if self._guest is not None:
            return self._guest
        return await asyncio.shield(self._refresh)

    async def _guest_usage(self, sandbox: Sandbox) -> tuple[int, int]:
        """The containers' CPU time (ns) and memory (bytes) in the guest, from their stats."""
        cpu = memory = 0
        for container_id in list(self.pod.containers):
            try:
                stats = await sandbox.agent.stats_container(
                    container_id, timeout=timeout_of("GetMetrics")  # a scrape's deadline
                )
            except ttrpc.TTRPCError:
                continue
            cgroup = stats.cgroup_stats
            cpu += cgroup.cpu_stats.cpu_usage.total_usage
            memory += cgroup.memory_stats.usage.usage
        return cpu, memory

    def _guest_path(self, volume_path: str) -> str | None:
        """Where a host volume (a bind source of a container) is seen in the guest."""
        wanted = os.path.realpath(volume_path)
        for container in self.pod.containers.values():
            for source, guest in container.shared_sources.items():
                if os.path.realpath(source) == wanted:
                    return guest
        return None

    # -- routes ------------------------------------------------------------------
    async def _agent_url(self, request: Request) -> Reply:
        try:
            sandbox = self._sandbox()
        except ttrpc.TTRPCError as exc:
            return _error(exc)
        return 200, TEXT, f"{sandbox.agent.address}\n"

    async def _metrics(self, request: Request) -> Reply:
        try:
            sandbox = self._sandbox()
        except ttrpc.TTRPCError as exc:
            return _error(exc)
        guest = await self._guest_reading(sandbox)
        body = await metrics_page(
            self._processes(sandbox),
            labels=self._labels(sandbox),
            rpc=self.rpc,
            overhead=self.overhead,
            guest_cpu_ns=guest.cpu_ns,
            guest_memory_bytes=guest.memory_bytes,
            agent_text=guest.page,
        )
        return 200, CONTENT_TYPE, body

    async def _volume_stats(self, request: Request) -> Reply:
        from google.protobuf.json_format import MessageToJson

        volume = request.param("path")
        if not volume:
            return 400, TEXT, "give the volume's host path: /direct-volume/stats?path=...\n"
        guest = self._guest_path(volume)
        if guest is None:
            return 404, TEXT, f"no container of this pod mounts {volume}\n"
        try:
            stats = await self._agent().volume_stats(guest)
        except ttrpc.TTRPCError as exc:
            return _error(exc)
        return 200, JSON, MessageToJson(stats, preserving_proto_field_name=True)

    async def _volume_resize(self, request: Request) -> Reply:
        try:
            body = json.loads(request.body or b"{}")
            volume, size = body["volumePath"], int(body["size"])
        except (ValueError, KeyError, TypeError):
            return 400, TEXT, 'the body must be JSON: {"volumePath": "...", "size": BYTES}\n'
        guest = self._guest_path(volume)
        if guest is None:
            return 404, TEXT, f"no container of this pod mounts {volume}\n"
        try:
            await self._agent().resize_volume(guest, size)
        except ttrpc.TTRPCError as exc:
            return _error(exc)
        return 200, TEXT, ""

    async def _iptables_v4(self, request: Request) -> Reply:
        return await self._iptables(request, ipv6=False)

    async def _iptables_v6(self, request: Request) -> Reply:
        return await self._iptables(request, ipv6=True)

    async def _iptables(self, request: Request, *, ipv6: bool) -> Reply:
        try:
            agent = self._agent()
            if request.method == "GET":
                rules = await agent.get_iptables(ipv6)
            else:
                rules = await agent.set_iptables(ipv6, request.body)
        except ttrpc.TTRPCError as exc:
            return _error(exc)
        return 200, TEXT, rules
