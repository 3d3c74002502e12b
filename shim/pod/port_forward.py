"""CRI port-forward, the host's half: the guest's TCP listeners mirrored on the pod
netns' loopback, each connection relayed into the VM through the agent.

containerd answers `kubectl port-forward` by dialing `localhost:PORT` inside the pod's
network namespace on the host (127.0.0.1, then ::1). With the workload in the VM
nothing listens there, so for every port that listens in the guest a socket listens
here in its place (on loopback only) and relays what it accepts.

The guest names the ports: they are bounded (MAX_PORTS, real port numbers), bound on
the pod netns' loopback only, and a connection only ever reaches the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable

import structlog

import ttrpc
from shim.guest_agent import GuestAgent
from shim.netns.nsenter import in_netns, in_own_thread

log = structlog.get_logger(__name__)

WATCH_WAIT = 30.0  # s the agent may hold a WatchListeners that sees no change
RETRY = 2.0  # s after a failed watch
MAX_PORTS = 128  # ports mirrored at once, lowest first (the agent reports as many)
MAX_RELAYS = 64  # connections relayed at once (the agent allows as many)
CHUNK = 64 * 1024
LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


def valid_ports(reported: Iterable[int]) -> list[int]:
    """The guest's report, as at most MAX_PORTS distinct real port numbers."""
    return sorted({port for port in reported if 0 < port < 65536})[:MAX_PORTS]


def listen_on_loopback(netns: str, ports: list[int]) -> dict[int, list[socket.socket]]:
    """Listening sockets on the netns' 127.0.0.1 and ::1 for each port (run it in a
    thread of its own: it enters the netns). A port taken there, or an address the
    netns lacks (no IPv6), is skipped with a log line."""
    made: dict[int, list[socket.socket]] = {}
    with in_netns(netns):
        for port in ports:
            for family, address in LOOPBACKS:
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((address, port))
                    sock.listen(64)
                    sock.setblocking(False)
                except OSError as exc:
                    sock.close()
                    log.debug("port-forward: cannot listen", address=address, port=port,
                              error=exc.strerror)
                    continue
                made.setdefault(port, []).append(sock)
    return made


class PortMirror:
    """One pod's mirrored ports and relayed connections."""

    def __init__(self, netns: str, agent: GuestAgent, sandbox_id: str) -> None:
        self.netns = netns
        self.agent = agent
        self.sandbox_id = sandbox_id
        self.servers: dict[int, list[asyncio.Server]] = {}
        self._relays: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None

    @property
    def ports(self) -> list[int]:
        """The ports listening on the pod netns' loopback now."""
        return sorted(self.servers)

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._follow_guest())

    async def stop(self) -> None:
        """Stop listening and end every relayed connection."""
        tasks = [t for t in (self._watch, *self._relays) if t is not None]
        for task in tasks:
            task.cancel()
        for port in list(self.servers):
            self._unlisten(port)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow_guest(self) -> None:
        known: list[int] = []
        while True:
            try:
                reported = await self.agent.watch_listeners(known, WATCH_WAIT)
            except ttrpc.TTRPCError as exc:
                if exc.code == ttrpc.Code.UNIMPLEMENTED:
                    log.warning("port-forward off: the guest's agent has no PortForward",
                                sandbox=self.sandbox_id)
                    return
                log.debug("port-forward: watch failed", error=str(exc))
                await asyncio.sleep(RETRY)
                continue
            known = valid_ports(reported)
            await self._mirror(known)

    async def _mirror(self, wanted: list[int]) -> None:
        for port in set(self.servers) - set(wanted):
            self._unlisten(port)
        new = [port for port in wanted if port not in self.servers]
        if not new:
            return
        try:
            made = await in_own_thread(listen_on_loopback, self.netns, new)
        except OSError as exc:  # the netns is gone: the pod is ending
            log.warning("port-forward: cannot enter the pod netns", error=str(exc))
            return
        for port, sockets in made.items():
            self.servers[port] = [
                await asyncio.start_server(self._relay_to(port), sock=sock) for sock in sockets
            ]
        if made:
            log.info("port-forward: listening", sandbox=self.sandbox_id, ports=self.ports)

    def _unlisten(self, port: int) -> None:
        for server in self.servers.pop(port, []):
            server.close()

    def _relay_to(self, port: int):
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._relays.add(task)
            try:
                if len(self._relays) > MAX_RELAYS:
                    log.warning("port-forward: too many connections", port=port,
                                limit=MAX_RELAYS)
                    return
                await self._relay(port, reader, writer)
            finally:
                self._relays.discard(task)
                writer.close()

        return relay

    async def _relay(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            connection = await self.agent.dial_port(port)
        except ttrpc.TTRPCError as exc:
            log.info("port-forward: the guest refused", port=port, error=exc.message)
            return
        directions = [
            asyncio.create_task(self._to_guest(connection, reader)),
            asyncio.create_task(self._to_host(connection, writer)),
        ]
        try:
            done, _ = await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    log.debug("port-forward: connection ended", port=port,
                              error=str(task.exception()))
        finally:
            for task in directions:
                task.cancel()
            with contextlib.suppress(ttrpc.TTRPCError):
                await self.agent.close_port(connection)

    async def _to_guest(self, connection: int, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(CHUNK)
            await self.agent.write_port(connection, data, eof=not data)
            if not data:
                return

    async def _to_host(self, connection: int, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await self.agent.read_port(connection, CHUNK)
            if len(data) > CHUNK:
                raise ValueError(f"the guest sent {len(data)} bytes where {CHUNK} were asked")
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
