"""CRI port-forward, the guest's half: which TCP ports listen in the pod, and the
connections the host relays to them.

containerd serves kubectl port-forward by dialing `localhost:PORT` inside the pod's
network namespace on the host. There nothing listens (the workload is in this VM), so
the shim mirrors the ports listening here on that namespace's loopback and relays each
connection through the calls below. Every container shares this VM's network
namespace, so the agent's own view of /proc/net/tcp{,6} is the pod's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

log = logging.getLogger("agent.forward")

LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
MAX_PORTS = 128  # listeners reported, lowest first
MAX_CONNECTIONS = 64  # relayed connections open at once
MAX_WAIT = 60.0  # s a WatchListeners may wait for a change
POLL = 0.5  # s between two looks at /proc/net/tcp while a watch waits
READ_MAX = 256 * 1024
DIAL_TIMEOUT = 10.0


class ForwardError(Exception):
    """A forward call the agent refuses; `kind` picks its gRPC code at the edge."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "not_found", "exhausted", "unavailable"


def _address(hex_text: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in the host's (little) byte order."""
    import ipaddress  # here: the agent's start-up path imports this module

    words = [int(hex_text[i:i + 8], 16) for i in range(0, len(hex_text), 8)]
    packed = struct.pack(f"<{len(words)}I", *words)
    return str(ipaddress.ip_address(packed))


def listeners(proc_net: str = "/proc/net") -> dict[int, set[str]]:
    """Every listening TCP port of this network namespace, with the addresses bound."""
    found: dict[int, set[str]] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc_net}/{table}") as text:
                lines = text.read().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != LISTEN_STATE:
                continue
            address, _, port = fields[1].partition(":")
            try:
                found.setdefault(int(port, 16), set()).add(_address(address))
            except ValueError:
                continue
    return found


def dial_order(bound: set[str]) -> list[str]:
    """Where to connect for a port bound to these addresses: IPv4 loopback first (what
    containerd dials on a runc host), then IPv6 loopback, then each specific address."""
    import ipaddress

    v4: list[str] = []
    v6: list[str] = []
    specific: list[str] = []
    for address in sorted(bound):
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and (ip.is_unspecified or ip.is_loopback):
            v4.append("127.0.0.1" if ip.is_unspecified else address)
        elif ip.version == 6 and (ip.is_unspecified or ip.is_loopback):
            v6.append("::1")
        else:
            specific.append(address)
    return list(dict.fromkeys(v4 + v6 + specific))


class Forwards:
    """The connections the host relays into this VM, each under a number."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._next = 1

    async def watch(self, known: set[int], wait: float) -> list[int]:
        """The listening ports, once they differ from `known` or `wait` s passed."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            ports = sorted(listeners())[:MAX_PORTS]
            if set(ports) != known or time.monotonic() >= deadline:
                return ports
            await asyncio.sleep(POLL)

    async def dial(self, port: int) -> int:
        """Connect to `port` where it listens; the connection's number."""
        if not 0 < port < 65536:
            raise ForwardError("invalid", f"port {port} is out of range")
        if len(self._open) >= MAX_CONNECTIONS:
            raise ForwardError("exhausted", f"{MAX_CONNECTIONS} forwarded connections are open")
        bound = listeners().get(port)
        if not bound:
            raise ForwardError("unavailable", f"nothing listens on TCP port {port} in the pod")
        errors: list[str] = []
        for address in dial_order(bound):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(address, port), DIAL_TIMEOUT
                )
            except (TimeoutError, OSError) as exc:
                errors.append(f"{address}: {exc or 'timed out'}")
                continue
            number = self._next
            self._next = self._next % 0xFFFFFFFF + 1
            self._open[number] = (reader, writer)
            log.debug("forward %d: connected to %s port %d", number, address, port)
            return number
        raise ForwardError("unavailable", f"cannot connect to port {port}: {'; '.join(errors)}")

    def _get(self, number: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        found = self._open.get(number)
        if found is None:
            raise ForwardError("not_found", f"forwarded connection {number} is not open")
        return found

    async def read(self, number: int, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end of the stream (or a reset)."""
        reader, _ = self._get(number)
        try:
            return await reader.read(min(size or READ_MAX, READ_MAX))
        except OSError:
            return b""

    async def write(self, number: int, data: bytes, eof: bool) -> int:
        """Send `data`, then shut writing down when `eof`."""
        _, writer = self._get(number)
        try:
            if data:
                writer.write(data)
                await writer.drain()
            if eof and writer.can_write_eof():
                writer.write_eof()
        except OSError as exc:
            raise ForwardError("unavailable", f"forwarded connection {number}: {exc}") from None
        return len(data)

    async def close(self, number: int) -> None:
        found = self._open.pop(number, None)
        if found is not None:
            found[1].close()
            with contextlib.suppress(OSError):
                await found[1].wait_closed()

    def close_all(self) -> None:
        for _, writer in self._open.values():
            writer.close()
        self._open.clear()
