"""Every guest-agent call by its CamelCase name, over an AgentClient: for tests (fast and
integration alike).

The shim calls the agent through shim.guest_agent.GuestAgent's typed methods only.
Tests that drive Kata's agent API method by method (any method, any request, a
deadline of their own) use these stubs, built from the services' descriptors:

    stub = AgentStub(client, AGENT_SERVICE)
    details = await stub.GetGuestDetails(agent_pb2.GuestDetailsRequest(), timeout=10)

Each call is `transport.request(Method, request, <its answer class>, timeout)`;
without `timeout`, the deadline is the one table's (shim.guest_agent.timeout_of),
so a test sees the same default deadlines as the shim. `timeout=None`: no deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from protos.kata import agent_pb2, health_pb2
from shim.agent_client import AgentClient
from shim.guest_agent import AgentTransport, GuestAgent, timeout_of
from ttrpc.service import message_class

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]

_TABLE: Any = object()  # "no timeout given": the table's deadline


class AgentStub:
    """`await stub.Method(request, timeout=...)` for each method of one service."""

    def __init__(
        self, transport: AgentTransport | GuestAgent, service: ServiceDescriptor = AGENT_SERVICE
    ) -> None:
        if isinstance(transport, GuestAgent):
            transport = transport.transport
        self.transport = transport
        self.service_name = service.full_name
        for method in service.methods:
            setattr(self, method.name, self._make(method))

    def _make(self, method: Any) -> Callable[..., Awaitable[Message]]:
        transport, name = self.transport, method.name
        answer = message_class(method.output_type)

        async def call(request: Message, *, timeout: float | None = _TABLE) -> Message:
            deadline = timeout_of(name) if timeout is _TABLE else timeout
            return await transport.request(name, request, answer, deadline)

        call.__name__ = name
        call.__qualname__ = f"{self.service_name}.{name}"
        return call


@dataclass(frozen=True)
class Stubs:
    """The two services of one transport: `.agent` (grpc.AgentService), `.health`."""

    agent: AgentStub
    health: AgentStub


def stubs_of(transport: AgentTransport | GuestAgent) -> Stubs:
    """Stubs over an existing transport, e.g. `vm.agent.transport` (a GuestAgent is
    unwrapped to its transport)."""
    if isinstance(transport, GuestAgent):
        transport = transport.transport
    return Stubs(AgentStub(transport, AGENT_SERVICE), AgentStub(transport, HEALTH_SERVICE))


class StubbedClient(AgentClient):
    """An AgentClient with `.agent` and `.health` stubs, as the client once had."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agent = AgentStub(self, AGENT_SERVICE)
        self.health = AgentStub(self, HEALTH_SERVICE)
