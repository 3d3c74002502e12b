"""The shim's client of the guest agent: Kata's agent API over our ttrpc.

One interface for three transports: the host end of a virtio-serial port (a Unix
socket that QEMU serves), AF_VSOCK to the guest's port 1024 (vhost-vsock), or hybrid
vsock (a Unix socket where `CONNECT 1024` opens the guest's port: shim.hybrid_vsock).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import TypeVar

import structlog
from google.protobuf.message import DecodeError, Message

import ttrpc
from protos.kata import agent_pb2, health_pb2
from protos.pykata import forward_pb2
from pykata_common.contract import AGENT_VSOCK_PORT
from shim import hybrid_vsock
from ttrpc.service import Metadata

log = structlog.get_logger(__name__)

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
FORWARD_SERVICE = forward_pb2.DESCRIPTOR.services_by_name["PortForward"]
# the service of each method that is not grpc.AgentService's (method names are unique)
SERVICE_OF = {
    method.name: service
    for service in (HEALTH_SERVICE, FORWARD_SERVICE)
    for method in service.methods
}
M = TypeVar("M", bound=Message)

# calls that are safe to send again after the connection broke under them
IDEMPOTENT = frozenset(
    {
        "Check",
        "Version",
        "GetGuestDetails",
        "ListInterfaces",
        "ListRoutes",
        "StatsContainer",
        "GetMetrics",
    }
)


class BadAnswer(ttrpc.TTRPCError):
    """An answer no honest agent gives (undecodable bytes, an impossible value): INTERNAL.

    The guest is not trusted, so what asked stops instead of acting on it."""

    def __init__(self, message: str) -> None:
        super().__init__(ttrpc.Code.INTERNAL, message)

    def __reduce__(self):
        return (type(self), (self.message,))


@dataclass(frozen=True)
class AgentAddress:
    """Where the agent listens, seen from the host: a Unix socket, a vsock CID, or a
    hybrid vsock socket (both vsock kinds at `vsock_port`)."""

    unix_path: str | None = None
    vsock_cid: int | None = None
    vsock_port: int = AGENT_VSOCK_PORT
    hvsock_path: str | None = None

    def __post_init__(self) -> None:
        given = (self.unix_path, self.vsock_cid, self.hvsock_path)
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of unix_path, vsock_cid and hvsock_path")

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        if self.hvsock_path is not None:
            return f"{hybrid_vsock.SCHEME}://{self.hvsock_path}:{self.vsock_port}"
        return f"vsock://{self.vsock_cid}:{self.vsock_port}"


class AgentClient:
    """A reconnecting ttrpc client of the guest agent.

    The transport of shim.guest_agent.GuestAgent (`request`). A broken connection is
    re-opened on the next call; a call that failed because the connection broke is
    retried once if it is idempotent.
    """

    def __init__(self, address: AgentAddress, *, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._client: ttrpc.Client | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._closed_reason = "agent client closed"
        self._observer: ttrpc.client.Observer | None = None

    @property
    def observer(self) -> ttrpc.client.Observer | None:
        """Called with (service, method, seconds, code) after each call, retries included
        (the ttrpc client's observer, on this connection and every later one)."""
        return self._observer

    @observer.setter
    def observer(self, observer: ttrpc.client.Observer | None) -> None:
        self._observer = observer
        if self._client is not None:
            self._client.observer = observer

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def connect(self) -> None:
        """Open the connection now (calls do it on demand otherwise)."""
        await self._ensure()

    async def _open(self) -> ttrpc.Client:
        if self.address.unix_path is not None:
            return await ttrpc.Client.connect(
                self.address.unix_path, timeout=self.connect_timeout, observer=self._observer
            )
        if self.address.hvsock_path is not None:
            stream = await hybrid_vsock.connect(
                self.address.hvsock_path, self.address.vsock_port, self.connect_timeout
            )
            try:
                return await ttrpc.Client.from_socket(stream, observer=self._observer)
            except BaseException:
                stream.close()
                raise
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(
                    sock, (self.address.vsock_cid, self.address.vsock_port)
                ),
                self.connect_timeout,
            )
            return await ttrpc.Client.from_socket(sock, observer=self._observer)
        except BaseException:
            sock.close()
            raise

    async def _ensure(self) -> ttrpc.Client:
        if self._closed:
            raise ttrpc.TTRPCError(ttrpc.Code.UNAVAILABLE, self._closed_reason)
        client = self._client
        if client is not None and not client.closed:
            return client
        async with self._lock:
            if self._client is None or self._client.closed:
                if self._client is not None:
                    log.info("agent connection lost, reconnecting", address=str(self.address))
                try:
                    self._client = await self._open()
                except (OSError, TimeoutError) as e:
                    raise ttrpc.TTRPCError(
                        ttrpc.Code.UNAVAILABLE, f"cannot connect to agent at {self.address}: {e}"
                    ) from e
            return self._client

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """One unary call; see the class docstring for retries. `timeout` None: no
        deadline (the long polls)."""
        attempts = 2 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            client = await self._ensure()
            try:
                return await client.call(
                    service, method, payload, timeout=timeout, metadata=metadata
                )
            except ttrpc.TTRPCError as e:
                if e.code == ttrpc.Code.DEADLINE_EXCEEDED:
                    within = f" within {timeout:g} s" if timeout else ""
                    message = f"the agent did not answer {method}{within} ({e.message})"
                    raise ttrpc.TTRPCError(e.code, message) from None
                if e.code != ttrpc.Code.UNAVAILABLE or not client.closed:
                    raise
                if attempt + 1 == attempts:
                    raise
                log.debug("agent call retried after a broken connection", method=method)
        raise AssertionError("unreachable")

    async def request(
        self, method: str, message: Message, answer: type[M], timeout: float | None
    ) -> M:
        """Send `message` to `method` (of grpc.Health, pykata.PortForward or
        grpc.AgentService, by its name) and decode the answer as `answer`. An answer that does not
        decode is a BadAnswer: the guest is not trusted."""
        service = SERVICE_OF.get(method, AGENT_SERVICE)
        payload = await self.call(
            service.full_name, method, message.SerializeToString(), timeout=timeout
        )
        try:
            return answer.FromString(payload)
        except DecodeError as exc:
            raise BadAnswer(
                f"the agent's answer to {method} is not a {answer.__name__}: {exc}"
            ) from None

    async def check(self, timeout: float = 5.0) -> health_pb2.HealthCheckResponse:
        """grpc.Health/Check; raises TTRPCError if the agent does not answer in time."""
        return await self.request(
            "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse, timeout
        )

    async def reset(self, reason: str = "client closed") -> None:
        """Drop the current connection (the next call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close(reason)

    async def close(self, reason: str = "agent client closed") -> None:
        """Close for good: calls in flight and later ones fail with UNAVAILABLE `reason`."""
        if not self._closed:
            self._closed = True
            self._closed_reason = reason
        await self.reset(self._closed_reason)
