"""The guest agent as the host uses it: one typed method per call, one timeout table.

`GuestAgent` wraps a transport (shim.agent_client.AgentClient, or a test's stand-in)
that sends one request and decodes its answer. Everything above it (the pod, the
network set-up, the monitor socket, a clone's restore) calls these methods; nothing
builds a stub at run time or passes an untyped answer upward.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from protos.kata import agent_pb2, health_pb2, types_pb2
from protos.kata import oci_pb2 as oci
from protos.pykata import forward_pb2

M = TypeVar("M", bound=Message)
Empty = empty_pb2.Empty

# Every call has a deadline: its entry here, or DEFAULT_TIMEOUT. None (no deadline) is
# kept for the long polls only; none outlives the pod: ReadStdout/ReadStderr end with
# their process, WaitProcess with the exit, GetOOMEvent with the pod (stopping the pod
# closes the agent). Generous, because TCG guests are slow.
DEFAULT_TIMEOUT = 60.0
TIMEOUTS: dict[str, float | None] = {
    "Check": 5.0,
    "Version": 5.0,
    "WaitProcess": None,
    "ReadStdout": None,
    "ReadStderr": None,
    "GetOOMEvent": None,
    "WriteStdin": 30.0,
    "CreateContainer": 120.0,  # Sandbox passes [runtime] create_container_timeout instead
    "RemoveContainer": 30.0,  # the guest is given REMOVE_GRACE of it to stop what is left
    "DestroySandbox": 5.0,  # the VM's stop follows and ends whatever is left
    "UpdateInterface": 30.0,
    "UpdateRoutes": 30.0,
    "AddARPNeighbors": 30.0,
    "SetGuestDateTime": 10.0,
    "ReseedRandomDev": 10.0,
    "OnlineCPUMem": 30.0,  # the agent waits up to 10 s for the new CPUs
    "GetMetrics": 2.0,  # the monitor's scrape; a slow guest gives an older page
    "GetVolumeStats": 10.0,
    "ResizeVolume": 10.0,
    "GetIPTables": 10.0,
    "SetIPTables": 10.0,
    "WatchListeners": 90.0,  # the agent answers within WATCH_WAIT
    "DialPort": 15.0,  # the agent gives a connect 10 s
    "ReadPort": None,
    "WritePort": 30.0,
    "ClosePort": 10.0,
}
TABLE: Any = object()  # "no deadline given": the table's
REMOVE_GRACE = 10  # seconds the agent gives a removed container's processes


class AgentTransport(Protocol):
    """Sends one request of grpc.AgentService or grpc.Health and decodes the answer."""

    async def request(
        self, method: str, message: Message, answer: type[M], timeout: float | None
    ) -> M: ...

    async def close(self, reason: str = ...) -> None: ...


def timeout_of(method: str) -> float | None:
    """The deadline of a call, from the one table."""
    return TIMEOUTS.get(method, DEFAULT_TIMEOUT)


class GuestAgent:
    """Typed calls of the guest agent (Kata's agent API) that the host makes."""

    def __init__(self, transport: AgentTransport) -> None:
        self.transport = transport

    async def _call(
        self, method: str, message: Message, answer: type[M], timeout: Any = TABLE
    ) -> M:
        deadline = timeout_of(method) if timeout is TABLE else timeout
        return await self.transport.request(method, message, answer, deadline)

    @property
    def address(self) -> str:
        """Where the agent is reached, as a URL (the monitor's /agent-url)."""
        return str(getattr(self.transport, "address", ""))

    @property
    def observer(self) -> Any:
        return getattr(self.transport, "observer", None)

    @observer.setter
    def observer(self, observer: Any) -> None:
        """Called after each call with (service, method, seconds, code)."""
        self.transport.observer = observer  # type: ignore[attr-defined]

    async def close(self, reason: str = "agent client closed") -> None:
        """Calls in flight and later ones fail with UNAVAILABLE `reason`."""
        await self.transport.close(reason)

    # -- health ------------------------------------------------------------------------
    async def check(self, timeout: float | None = None) -> health_pb2.HealthCheckResponse:
        """grpc.Health/Check."""
        deadline = timeout_of("Check") if timeout is None else timeout
        return await self._call(
            "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, deadline
        )

    # -- the sandbox -------------------------------------------------------------------
    async def create_sandbox(
        self,
        sandbox_id: str,
        *,
        hostname: str,
        dns: list[str],
        storages: list[agent_pb2.Storage],
        sandbox_pidns: bool,
    ) -> None:
        request = agent_pb2.CreateSandboxRequest(
            hostname=hostname,
            dns=dns,
            storages=storages,
            sandbox_id=sandbox_id,
            sandbox_pidns=sandbox_pidns,
        )
        await self._call("CreateSandbox", request, Empty)

    async def destroy_sandbox(self) -> None:
        await self._call("DestroySandbox", agent_pb2.DestroySandboxRequest(), Empty)

    # -- containers --------------------------------------------------------------------
    async def create_container(
        self,
        container_id: str,
        spec: oci.Spec,
        *,
        sandbox_pidns: bool,
        timeout: float,
        storages: list[agent_pb2.Storage] | None = None,
    ) -> None:
        """storages: what the guest mounts for it first (a memory emptyDir's tmpfs)."""
        request = agent_pb2.CreateContainerRequest(
            container_id=container_id,
            exec_id=container_id,
            OCI=spec,
            sandbox_pidns=sandbox_pidns,
            storages=storages or [],
        )
        await self._call("CreateContainer", request, Empty, timeout)

    async def start_container(self, container_id: str) -> None:
        request = agent_pb2.StartContainerRequest(container_id=container_id)
        await self._call("StartContainer", request, Empty)

    async def remove_container(self, container_id: str) -> None:
        request = agent_pb2.RemoveContainerRequest(container_id=container_id, timeout=REMOVE_GRACE)
        await self._call("RemoveContainer", request, Empty)

    async def pause_container(self, container_id: str) -> None:
        request = agent_pb2.PauseContainerRequest(container_id=container_id)
        await self._call("PauseContainer", request, Empty)

    async def resume_container(self, container_id: str) -> None:
        request = agent_pb2.ResumeContainerRequest(container_id=container_id)
        await self._call("ResumeContainer", request, Empty)

    async def stats_container(
        self, container_id: str, timeout: Any = TABLE
    ) -> agent_pb2.StatsContainerResponse:
        request = agent_pb2.StatsContainerRequest(container_id=container_id)
        return await self._call(
            "StatsContainer", request, agent_pb2.StatsContainerResponse, timeout
        )

    async def update_container(self, container_id: str, resources: oci.LinuxResources) -> None:
        request = agent_pb2.UpdateContainerRequest(container_id=container_id, resources=resources)
        await self._call("UpdateContainer", request, Empty)

    async def get_oom_event(self) -> str:
        """The id of the next container the guest's OOM killer hit (a long poll)."""
        answer = await self._call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent)
        return answer.container_id

    # -- processes ---------------------------------------------------------------------
    async def exec_process(self, container_id: str, exec_id: str, process: oci.Process) -> None:
        request = agent_pb2.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, process=process
        )
        await self._call("ExecProcess", request, Empty)

    async def signal_process(self, container_id: str, exec_id: str, signal: int) -> None:
        """exec_id "" signals every process of the container."""
        request = agent_pb2.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signal
        )
        await self._call("SignalProcess", request, Empty)

    async def wait_process(self, container_id: str, exec_id: str) -> int:
        """The process's exit status, once it exits (a long poll)."""
        request = agent_pb2.WaitProcessRequest(container_id=container_id, exec_id=exec_id)
        answer = await self._call("WaitProcess", request, agent_pb2.WaitProcessResponse)
        return answer.status

    async def read_output(self, stream: str, container_id: str, exec_id: str, size: int) -> bytes:
        """The next bytes of a process's "stdout" or "stderr" (b"": it ended)."""
        method = {"stdout": "ReadStdout", "stderr": "ReadStderr"}[stream]
        request = agent_pb2.ReadStreamRequest(container_id=container_id, exec_id=exec_id, len=size)
        answer = await self._call(method, request, agent_pb2.ReadStreamResponse)
        return answer.data

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        """How many of `data`'s bytes the guest took (unchecked: the caller bounds it)."""
        request = agent_pb2.WriteStreamRequest(
            container_id=container_id, exec_id=exec_id, data=data
        )
        answer = await self._call("WriteStdin", request, agent_pb2.WriteStreamResponse)
        return answer.len

    async def close_stdin(self, container_id: str, exec_id: str) -> None:
        request = agent_pb2.CloseStdinRequest(container_id=container_id, exec_id=exec_id)
        await self._call("CloseStdin", request, Empty)

    async def resize_tty(self, container_id: str, exec_id: str, rows: int, columns: int) -> None:
        request = agent_pb2.TtyWinResizeRequest(
            container_id=container_id, exec_id=exec_id, row=rows, column=columns
        )
        await self._call("TtyWinResize", request, Empty)

    # -- the guest's network -----------------------------------------------------------
    async def update_interface(self, interface: Any) -> None:
        request = agent_pb2.UpdateInterfaceRequest(interface=interface)
        await self._call("UpdateInterface", request, types_pb2.Interface)

    async def update_routes(self, routes: list[Any]) -> None:
        request = agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=routes))
        await self._call("UpdateRoutes", request, agent_pb2.Routes)

    async def add_arp_neighbors(self, neighbors: list[Any]) -> None:
        request = agent_pb2.AddARPNeighborsRequest(
            neighbors=agent_pb2.ARPNeighbors(ARPNeighbors=neighbors)
        )
        await self._call("AddARPNeighbors", request, Empty)

    async def get_iptables(self, ipv6: bool) -> bytes:
        request = agent_pb2.GetIPTablesRequest(is_ipv6=ipv6)
        return (await self._call("GetIPTables", request, agent_pb2.GetIPTablesResponse)).data

    async def set_iptables(self, ipv6: bool, data: bytes) -> bytes:
        request = agent_pb2.SetIPTablesRequest(is_ipv6=ipv6, data=data)
        return (await self._call("SetIPTables", request, agent_pb2.SetIPTablesResponse)).data

    # -- the guest as a whole ----------------------------------------------------------
    async def set_guest_time(self, seconds: int, microseconds: int) -> None:
        request = agent_pb2.SetGuestDateTimeRequest(Sec=seconds, Usec=microseconds)
        await self._call("SetGuestDateTime", request, Empty)

    async def reseed_random(self, data: bytes) -> None:
        await self._call("ReseedRandomDev", agent_pb2.ReseedRandomDevRequest(data=data), Empty)

    async def online_cpu_mem(self, nb_cpus: int, *, cpu_only: bool) -> None:
        """After a hot-plug: bring the nb_cpus new CPUs (and new memory) online."""
        request = agent_pb2.OnlineCPUMemRequest(wait=True, nb_cpus=nb_cpus, cpu_only=cpu_only)
        await self._call("OnlineCPUMem", request, Empty)

    async def get_metrics(self) -> str:
        """The agent's own Prometheus page."""
        answer = await self._call("GetMetrics", agent_pb2.GetMetricsRequest(), agent_pb2.Metrics)
        return answer.metrics

    async def volume_stats(self, guest_path: str) -> agent_pb2.VolumeStatsResponse:
        request = agent_pb2.VolumeStatsRequest(volume_guest_path=guest_path)
        return await self._call("GetVolumeStats", request, agent_pb2.VolumeStatsResponse)

    async def resize_volume(self, guest_path: str, size: int) -> None:
        request = agent_pb2.ResizeVolumeRequest(volume_guest_path=guest_path, size=size)
        await self._call("ResizeVolume", request, Empty)

    # -- port-forward (pykata.PortForward) ---------------------------------------------
    async def watch_listeners(self, known: list[int], wait: float) -> list[int]:
        """The guest's listening TCP ports, once they differ from `known` or after `wait`
        s (the agent caps it at 60). Unchecked: the caller bounds them."""
        request = forward_pb2.WatchListenersRequest(known=known, wait_ms=int(wait * 1000))
        return list((await self._call("WatchListeners", request, forward_pb2.Listeners)).ports)

    async def dial_port(self, port: int) -> int:
        """Connect to the guest's `port`; the connection's number."""
        request = forward_pb2.DialPortRequest(port=port)
        return (await self._call("DialPort", request, forward_pb2.DialPortResponse)).connection

    async def read_port(self, connection: int, size: int) -> bytes:
        """Up to `size` bytes from a connection (b"": its end); unchecked."""
        request = forward_pb2.ReadPortRequest(connection=connection, len=size)
        return (await self._call("ReadPort", request, forward_pb2.PortData)).data

    async def write_port(self, connection: int, data: bytes, *, eof: bool = False) -> None:
        request = forward_pb2.WritePortRequest(connection=connection, data=data, eof=eof)
        await self._call("WritePort", request, forward_pb2.WritePortResponse)

    async def close_port(self, connection: int) -> None:
        request = forward_pb2.ClosePortRequest(connection=connection)
        await self._call("ClosePort", request, Empty)
