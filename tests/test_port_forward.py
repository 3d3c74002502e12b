"""CRI port-forward: the agent's view of the guest's listeners and its relayed
connections, and the shim's mirror of them on a pod netns' loopback.

The mirror test is real on both ends short of the VM: a network namespace made here
stands for the pod's, this process's own namespace for the guest's, and the agent's
PortForward handlers sit behind GuestAgent in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import threading
import uuid

import pytest

from agent.forward import MAX_PORTS, ForwardError, Forwards, dial_order, listeners
from agent.forward_service import PortForwardService
from shim.guest_agent import GuestAgent
from shim.netns.nsenter import in_netns
from shim.pod import port_forward
from shim.pod.port_forward import PortMirror, valid_ports

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2
   2: 0200A8C0:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3
   3: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4
   4: garbage
"""
TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 0
"""


def test_listeners_reads_both_tables_and_only_listening_sockets(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert listeners(str(tmp_path)) == {
        8080: {"127.0.0.1"},
        8081: {"0.0.0.0", "::"},
        8082: {"192.168.0.2"},
        8083: {"::1"},
    }


def test_listeners_without_ipv6(tmp_path):
    (tmp_path / "tcp").write_text(TCP)
    assert sorted(listeners(str(tmp_path))) == [8080, 8081, 8082]


@pytest.mark.parametrize(("bound", "order"), [
    ({"0.0.0.0"}, ["127.0.0.1"]),
    ({"127.0.0.2"}, ["127.0.0.2"]),
    ({"::"}, ["::1"]),
    ({"::1", "0.0.0.0"}, ["127.0.0.1", "::1"]),
    ({"192.168.0.2", "::"}, ["::1", "192.168.0.2"]),
    ({"192.168.0.2"}, ["192.168.0.2"]),
])
def test_dial_order_prefers_loopback(bound, order):
    assert dial_order(bound) == order


def test_the_host_bounds_what_the_guest_reports():
    assert valid_ports([0, 80, 80, 65535, 65536, 1 << 31]) == [80, 65535]
    assert len(valid_ports(range(1, 60000))) == port_forward.MAX_PORTS


@contextlib.asynccontextmanager
async def echo_server(host: str = "127.0.0.1"):
    """A server in this netns that answers each line with "echo: " + line."""

    async def serve(reader, writer):
        while line := await reader.readline():
            writer.write(b"echo: " + line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_forwards_relay_a_connection_to_a_listening_port():
    forwards = Forwards()
    async with echo_server() as port:
        assert port in await forwards.watch(set(), 0)
        number = await forwards.dial(port)
        assert await forwards.write(number, b"one\n", eof=True) == 4
        assert await forwards.read(number, 100) == b"echo: one\n"
        assert await forwards.read(number, 100) == b""  # the server closed after our eof
        await forwards.close(number)
        with pytest.raises(ForwardError) as missing:
            await forwards.read(number, 100)
        assert missing.value.kind == "not_found"


async def test_forwards_refuse_what_does_not_listen_and_bad_ports():
    forwards = Forwards()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    for port, kind in ((free, "unavailable"), (0, "invalid"), (70000, "invalid")):
        with pytest.raises(ForwardError) as refused:
            await forwards.dial(port)
        assert refused.value.kind == kind


async def test_watch_answers_at_once_when_the_host_knows_less():
    forwards = Forwards()
    async with echo_server() as port:
        ports = await asyncio.wait_for(forwards.watch(set(), 30), 5)
        assert port in ports and len(ports) <= MAX_PORTS


class InProcess:
    """GuestAgent's transport, straight to the agent's PortForward handlers."""

    def __init__(self, service: PortForwardService) -> None:
        self.service = service

    async def request(self, method, message, answer, timeout):
        from ttrpc.errors import TTRPCError

        try:
            reply = await getattr(self.service, method)(message, None)
        except TTRPCError:
            raise
        return answer.FromString(reply.SerializeToString())

    async def close(self, reason: str = "") -> None:
        pass


@pytest.fixture
def pod_netns():
    """A network namespace of the test's own, loopback up, nothing else in it."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"pkpf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def dial_in(netns: str, family: int, address: str, port: int, line: bytes) -> bytes:
    """What containerd does: connect inside the pod netns, send, read to the end."""
    result: list[bytes | BaseException] = []

    def body() -> None:
        try:
            with in_netns(netns):
                sock = socket.socket(family, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(10)
                sock.connect((address, port))
                chunks = []
                try:  # a relay that ends the connection may reset it under our feet
                    sock.sendall(line)
                    sock.shutdown(socket.SHUT_WR)
                    while chunk := sock.recv(4096):
                        chunks.append(chunk)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:
                        raise
                result.append(b"".join(chunks))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_mirror_relays_from_the_pod_netns_loopback_to_the_guest(pod_netns,
                                                                           monkeypatch):
    monkeypatch.setattr("agent.forward.POLL", 0.05)
    forwards = Forwards()
    agent = GuestAgent(InProcess(PortForwardService(forwards)))
    mirror = PortMirror(pod_netns, agent, "sandbox-1")
    async with echo_server("0.0.0.0") as port:
        mirror.start()
        try:
            await wait_for(lambda: port in mirror.ports)
            for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                answer = await asyncio.to_thread(
                    dial_in, pod_netns, family, address, port, b"through the VM\n")
                assert answer == b"echo: through the VM\n"
            await wait_for(lambda: not forwards._open)  # each relay closed its connection
        finally:
            await mirror.stop()
    # the guest's listener went: so did the mirror's (nothing listens in the netns now)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(dial_in, pod_netns, socket.AF_INET, "127.0.0.1", port, b"x")
    assert mirror.ports == []


async def test_the_mirror_follows_listeners_that_come_and_go(pod_netns, monkeypatch):
    monkeypatch.setattr("agent.forward.POLL", 0.05)
    agent = GuestAgent(InProcess(PortForwardService(Forwards())))
    mirror = PortMirror(pod_netns, agent, "sandbox-1")
    mirror.start()
    try:
        async with echo_server() as port:
            await wait_for(lambda: port in mirror.ports)
        await wait_for(lambda: port not in mirror.ports)
    finally:
        await mirror.stop()


class HostileGuest:
    """An agent that reports every port there is and answers reads with too much."""

    def __init__(self) -> None:
        self.closed: list[int] = []

    async def request(self, method, message, answer, timeout):
        from google.protobuf.empty_pb2 import Empty

        from protos.pykata import forward_pb2 as pb

        if method == "WatchListeners":
            if list(message.known):  # the second look: hold it, as an idle guest does
                await asyncio.sleep(3600)
            return pb.Listeners(ports=[0, *range(1, 65536), 70000])
        if method == "DialPort":
            return pb.DialPortResponse(connection=7)
        if method == "ReadPort":
            return pb.PortData(data=b"x" * (port_forward.CHUNK + 1))
        if method == "WritePort":
            return pb.WritePortResponse(len=len(message.data))
        if method == "ClosePort":
            self.closed.append(message.connection)
            return Empty()
        raise AssertionError(method)

    async def close(self, reason: str = "") -> None:
        pass


async def test_a_hostile_guest_gets_loopback_sockets_within_bounds_and_no_oversized_data(
        pod_netns):
    guest = HostileGuest()
    mirror = PortMirror(pod_netns, GuestAgent(guest), "sandbox-1")
    mirror.start()
    try:
        await wait_for(lambda: len(mirror.ports) >= port_forward.MAX_PORTS)
        assert mirror.ports == list(range(1, port_forward.MAX_PORTS + 1))
        for servers in mirror.servers.values():
            for server in servers:
                for sock in server.sockets:
                    assert sock.getsockname()[0] in ("127.0.0.1", "::1")
        # the oversized read ends the connection: nothing of it reaches the host side
        answer = await asyncio.to_thread(dial_in, pod_netns, socket.AF_INET, "127.0.0.1",
                                         1, b"hello\n")
        assert answer == b""
        await wait_for(lambda: guest.closed == [7])
    finally:
        await mirror.stop()
    assert mirror.ports == []
