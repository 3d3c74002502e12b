"""AgentClient and GuestAgent: typed calls, the per-method timeouts (shim.guest_agent's one
table), reconnects and the retry rule."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from google.protobuf import empty_pb2

import ttrpc
from integration.agent_stubs import StubbedClient, stubs_of
from protos.kata import agent_pb2, health_pb2
from shim import guest_agent
from shim.agent_client import AgentAddress, AgentClient
from shim.guest_agent import GuestAgent, timeout_of
from ttrpc.transport import listen_unix


class FakeAgent:
    """Health + a bit of AgentService."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.check_delay = 0.0

    async def Check(self, request, context):
        self.calls.append("Check")
        await asyncio.sleep(self.check_delay)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def GetGuestDetails(self, request, context):
        self.calls.append("GetGuestDetails")
        return agent_pb2.GuestDetailsResponse(
            agent_details=agent_pb2.AgentDetails(version="fake"))

    async def CreateContainer(self, request, context):
        self.calls.append(f"CreateContainer {request.container_id}")
        return empty_pb2.Empty()

    async def GetMetrics(self, request, context):
        self.calls.append("GetMetrics")
        return agent_pb2.Metrics(metrics="kata_agent_up 1\n")


def make_server(fake: FakeAgent) -> ttrpc.Server:
    server = ttrpc.Server()
    server.register(health_pb2.DESCRIPTOR.services_by_name["Health"], fake)
    server.register(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], fake)
    return server


@pytest.fixture
async def served(tmp_path):
    fake = FakeAgent()
    server = make_server(fake)
    path = str(tmp_path / "agent.sock")
    await server.serve_unix(path)
    yield fake, server, path
    await server.shutdown(grace=0.5)


async def test_typed_calls(served):
    fake, _, path = served
    client = AgentClient(AgentAddress(unix_path=path))
    agent = GuestAgent(client)
    try:
        answer = await client.check()
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert (await agent.check()).status == health_pb2.HealthCheckResponse.SERVING
        assert await agent.get_metrics() == "kata_agent_up 1\n"
        details = await client.request(
            "GetGuestDetails", agent_pb2.GuestDetailsRequest(), agent_pb2.GuestDetailsResponse, 5
        )
        assert details.agent_details.version == "fake"
        assert client.connected
    finally:
        await agent.close()
    assert fake.calls == ["Check", "Check", "GetMetrics", "GetGuestDetails"]
    with pytest.raises(ttrpc.TTRPCError) as err:
        await client.check()
    assert err.value.code == ttrpc.Code.UNAVAILABLE


async def test_default_timeout_per_method(served, monkeypatch):
    fake, _, path = served
    fake.check_delay = 1.0
    monkeypatch.setitem(guest_agent.TIMEOUTS, "Check", 0.05)
    client = AgentClient(AgentAddress(unix_path=path))
    agent = GuestAgent(client)
    try:
        with pytest.raises(ttrpc.TTRPCError) as err:
            await agent.check()
        assert err.value.code == ttrpc.Code.DEADLINE_EXCEEDED
        assert err.value.message == (
            "the agent did not answer Check within 0.05 s (context deadline exceeded)"
        )
        fake.check_delay = 0.1
        # an explicit timeout wins over the default
        await agent.check(timeout=2.0)
    finally:
        await client.close()


def test_timeouts_table():
    assert timeout_of("WaitProcess") is None
    assert timeout_of("ReadStdout") is None
    assert timeout_of("UpdateRoutes") == 30


async def test_test_stubs_take_their_default_deadlines_from_the_table():
    """integration/agent_stubs.py: the tests' CamelCase calls keep the shim's deadlines."""
    sent: list[tuple[str, type, float | None]] = []

    class Recorder:
        async def request(self, method, message, answer, timeout):
            sent.append((method, answer, timeout))
            return answer()

    stubs = stubs_of(GuestAgent(Recorder()))
    await stubs.agent.WaitProcess(agent_pb2.WaitProcessRequest())
    await stubs.agent.UpdateRoutes(agent_pb2.UpdateRoutesRequest(), timeout=3)
    await stubs.health.Check(health_pb2.CheckRequest())
    assert sent == [
        ("WaitProcess", agent_pb2.WaitProcessResponse, None),
        ("UpdateRoutes", agent_pb2.Routes, 3),
        ("Check", health_pb2.HealthCheckResponse, 5.0),
    ]


async def test_reconnects_after_the_agent_went_away(tmp_path):
    path = str(tmp_path / "agent.sock")
    first = make_server(FakeAgent())
    await first.serve_unix(path)
    client = AgentClient(AgentAddress(unix_path=path))
    try:
        await client.check()
        await first.shutdown(grace=0.1)
        second_fake = FakeAgent()
        second = make_server(second_fake)
        await second.serve_unix(path)
        await asyncio.sleep(0.05)  # let the client notice the close
        await client.check()
        assert second_fake.calls == ["Check"]
        await second.shutdown(grace=0.1)
    finally:
        await client.close()


async def test_unreachable_agent_is_unavailable(tmp_path):
    client = AgentClient(AgentAddress(unix_path=str(tmp_path / "none.sock")))
    with pytest.raises(ttrpc.TTRPCError) as err:
        await client.check()
    assert err.value.code == ttrpc.Code.UNAVAILABLE
    assert "cannot connect to agent" in err.value.message
    await client.close()


class DropFirst:
    """A listener that drops the first connection once a request arrives, then serves."""

    def __init__(self, path: str, fake: FakeAgent) -> None:
        self.sock = listen_unix(path)
        self.server = make_server(fake)
        self.accepted = 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self.accepted += 1
            if self.accepted == 1:
                await loop.sock_recv(conn, 4096)
                conn.close()
            else:
                await self.server.serve_socket(conn)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.server.shutdown(grace=0.1)
        self.sock.close()


async def test_idempotent_call_is_retried_once_on_a_new_connection(tmp_path):
    fake = FakeAgent()
    drop = DropFirst(str(tmp_path / "a.sock"), fake)
    client = StubbedClient(AgentAddress(unix_path=str(tmp_path / "a.sock")))
    try:
        details = await client.agent.GetGuestDetails(agent_pb2.GuestDetailsRequest())
        assert details.agent_details.version == "fake"
        assert drop.accepted == 2 and fake.calls == ["GetGuestDetails"]
    finally:
        await client.close()
        await drop.close()


async def test_non_idempotent_call_is_not_retried(tmp_path):
    fake = FakeAgent()
    drop = DropFirst(str(tmp_path / "a.sock"), fake)
    client = StubbedClient(AgentAddress(unix_path=str(tmp_path / "a.sock")))
    try:
        with pytest.raises(ttrpc.TTRPCError) as err:
            await client.agent.CreateContainer(agent_pb2.CreateContainerRequest(container_id="c1"))
        assert err.value.code == ttrpc.Code.UNAVAILABLE
        assert fake.calls == []
        # the next call opens a new connection
        await client.agent.CreateContainer(agent_pb2.CreateContainerRequest(container_id="c2"))
        assert fake.calls == ["CreateContainer c2"]
    finally:
        await client.close()
        await drop.close()


def test_addresses():
    assert str(AgentAddress(unix_path="/run/x/agent.sock")) == "unix:///run/x/agent.sock"
    assert str(AgentAddress(vsock_cid=42)) == "vsock://42:1024"
    with pytest.raises(ValueError):
        AgentAddress()
    with pytest.raises(ValueError):
        AgentAddress(unix_path="/x", vsock_cid=3)


@pytest.mark.skipif(not hasattr(socket, "AF_VSOCK"), reason="no AF_VSOCK in this Python")
async def test_vsock_connect_failure_is_unavailable():
    # CID 2**32-3 does not exist: the connect fails (no vsock transport here, or no such VM)
    client = AgentClient(AgentAddress(vsock_cid=2**32 - 3), connect_timeout=1.0)
    with pytest.raises(ttrpc.TTRPCError) as err:
        await client.check()
    assert err.value.code == ttrpc.Code.UNAVAILABLE
    await client.close()


async def test_an_observer_set_on_a_connected_client_sees_this_and_later_connections(served):
    _, _, path = served
    seen: list[tuple[str, str, ttrpc.Code]] = []
    client = AgentClient(AgentAddress(unix_path=path))
    try:
        await client.check()
        client.observer = lambda service, method, seconds, code: seen.append(
            (service, method, code)
        )
        await client.check()
        await client.reset()  # the next call opens a new connection
        await client.check()
    finally:
        await client.close()
    assert seen == [("grpc.Health", "Check", ttrpc.Code.OK)] * 2
