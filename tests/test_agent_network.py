"""The agent's netlink code, run in the agent's own network namespace (unshare --net).

Every interface here is made by the test inside that namespace: two veth pairs
with both ends in it (this kernel has no dummy driver). Addresses come from
198.18.0.0/15 and the IPv6 benchmarking range 2001:2::/48; no default route.
The namespace dies with the agent.
"""

from __future__ import annotations

import pytest
from agent_support import Agent, requires_agent_host

from protos.kata import agent_pb2, types_pb2
from ttrpc import Code, TTRPCError

pytestmark = [requires_agent_host, pytest.mark.timeout(60)]

MAC = "02:00:00:18:00:02"
NUD_PERMANENT = 0x80


@pytest.fixture
async def agent(tmp_path):
    running = await Agent(tmp_path).start()
    try:
        running.in_netns(
            "ip", "link", "add", "d0", "address", MAC, "type", "veth", "peer", "name", "d1"
        )
        running.in_netns("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        yield running
    finally:
        await running.stop()
        print(running.log())


def v4(address: str, mask: str) -> types_pb2.IPAddress:
    return types_pb2.IPAddress(family=types_pb2.v4, address=address, mask=mask)


async def update(agent: Agent, **fields: object) -> types_pb2.Interface:
    return await agent.agent.UpdateInterface(
        agent_pb2.UpdateInterfaceRequest(interface=types_pb2.Interface(**fields))  # type: ignore[arg-type]
    )


async def test_update_interface_found_by_mac(agent):
    answer = await update(
        agent,
        name="eth0",
        hwAddr=MAC,
        mtu=1400,
        IPAddresses=[
            v4("198.18.0.2", "24"),
            types_pb2.IPAddress(family=types_pb2.v6, address="2001:2::2", mask="64"),
        ],
    )
    assert (answer.name, answer.hwAddr, answer.mtu) == ("eth0", MAC, 1400)
    assert answer.raw_flags & 1  # IFF_UP
    assert answer.type == "veth"
    addresses = {(a.address, a.mask) for a in answer.IPAddresses}
    assert {("198.18.0.2", "24"), ("2001:2::2", "64")} <= addresses
    shown = agent.in_netns("ip", "-o", "addr", "show", "dev", "eth0")
    assert "inet 198.18.0.2/24" in shown and "inet6 2001:2::2/64" in shown
    assert "mtu 1400" in agent.in_netns("ip", "link", "show", "eth0")

    # again, with another address: the old one goes, the name stays
    answer = await update(agent, name="eth0", hwAddr=MAC, IPAddresses=[v4("198.18.0.3", "24")])
    shown = agent.in_netns("ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert "198.18.0.3/24" in shown and "198.18.0.2" not in shown


async def test_update_interface_found_by_name_and_listed(agent):
    await update(agent, device="v0", name="v0", IPAddresses=[v4("198.19.0.1", "30")])
    listed = await agent.agent.ListInterfaces(agent_pb2.ListInterfacesRequest())
    by_name = {i.name: i for i in listed.Interfaces}
    assert {"lo", "d0", "v0", "v1"} <= set(by_name)
    assert by_name["d0"].hwAddr == MAC
    assert by_name["v0"].type == "veth"
    assert [(a.address, a.mask) for a in by_name["v0"].IPAddresses] == [("198.19.0.1", "30")]


async def test_unknown_interface_is_not_found(agent):
    with pytest.raises(TTRPCError) as caught:
        await update(agent, name="eth9", hwAddr="02:00:00:00:99:99")
    assert caught.value.code == Code.NOT_FOUND
    with pytest.raises(TTRPCError) as caught:
        await update(agent, name="eth0", hwAddr=MAC, IPAddresses=[v4("not-an-ip", "24")])
    assert caught.value.code == Code.INVALID_ARGUMENT


async def test_update_routes_replaces_them_and_lists_them(agent):
    await update(agent, name="eth0", hwAddr=MAC, IPAddresses=[v4("198.18.0.2", "24")])
    routes = [
        types_pb2.Route(dest="198.19.0.0/16", gateway="198.18.0.1", device="eth0"),
        types_pb2.Route(dest="198.18.1.0/24", device="eth0", source="198.18.0.2"),
    ]
    answer = await agent.agent.UpdateRoutes(
        agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=routes))
    )
    got = {(r.dest, r.gateway, r.device) for r in answer.Routes}
    assert ("198.19.0.0/16", "198.18.0.1", "eth0") in got
    assert ("198.18.1.0/24", "", "eth0") in got
    assert ("198.18.0.0/24", "", "eth0") in got  # the kernel's own route stays
    shown = agent.in_netns("ip", "-4", "route", "show")
    assert "198.19.0.0/16 via 198.18.0.1 dev eth0" in shown
    assert "198.18.1.0/24 dev eth0 scope link src 198.18.0.2" in shown

    # a new list replaces the old one
    await agent.agent.UpdateRoutes(
        agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=routes[1:]))
    )
    listed = await agent.agent.ListRoutes(agent_pb2.ListRoutesRequest())
    dests = {r.dest for r in listed.Routes}
    assert "198.19.0.0/16" not in dests and "198.18.1.0/24" in dests

    with pytest.raises(TTRPCError) as caught:
        await agent.agent.UpdateRoutes(
            agent_pb2.UpdateRoutesRequest(
                routes=agent_pb2.Routes(
                    Routes=[types_pb2.Route(dest="198.18.9.0/24", device="nope")]
                )
            )
        )
    assert caught.value.code == Code.NOT_FOUND


async def test_add_arp_neighbors(agent):
    await update(agent, device="v0", name="v0", IPAddresses=[v4("198.18.5.1", "24")])
    await agent.agent.AddARPNeighbors(
        agent_pb2.AddARPNeighborsRequest(
            neighbors=agent_pb2.ARPNeighbors(
                ARPNeighbors=[
                    types_pb2.ARPNeighbor(
                        toIPAddress=v4("198.18.5.9", ""),
                        device="v0",
                        lladdr="02:00:00:18:05:09",
                        state=NUD_PERMANENT,
                    )
                ]
            )
        )
    )
    shown = agent.in_netns("ip", "neigh", "show", "dev", "v0")
    assert "198.18.5.9 lladdr 02:00:00:18:05:09 PERMANENT" in shown
