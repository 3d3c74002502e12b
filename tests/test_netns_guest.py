"""What the agent is told about the pod network: interfaces, routes, neighbours."""

from __future__ import annotations

import socket

from protos.kata import types_pb2
from shim.netns.guest import guest_network
from shim.netns.model import IPAddr, Link, Neighbor, NetnsScan, Route
from shim.netns.plan import build_plan, marker

AF4, AF6 = socket.AF_INET, socket.AF_INET6
ETH0 = Link(2, "eth0", "veth", "02:42:c6:12:00:02", 1400, addresses=(
    IPAddr(AF4, "198.18.0.2", 24),
    IPAddr(AF6, "2001:2::2", 64),
    IPAddr(AF6, "fe80::42:c6ff:fe12:2", 64),
))
NET1 = Link(3, "net1", "veth", "02:42:c6:12:01:02", 1500,
            addresses=(IPAddr(AF4, "198.18.1.2", 24),))
BR0 = Link(4, "br0", "bridge", "02:42:c6:12:09:09", 1500)
ROUTES = (
    Route(AF4, "", 0, gateway="198.18.0.1", oif=2, protocol=3),
    Route(AF4, "198.18.0.0", 24, oif=2, prefsrc="198.18.0.2", scope=253, protocol=2),
    Route(AF4, "198.18.1.0", 24, oif=3, prefsrc="198.18.1.2", scope=253, protocol=2),
    Route(AF4, "198.19.0.0", 16, gateway="198.18.1.1", oif=3, mtu=1400),
    Route(AF4, "198.19.9.0", 24, oif=4, scope=253),  # through the skipped bridge
    Route(AF6, "fe80::", 64, oif=2, protocol=2),
    Route(AF6, "2001:2::", 64, oif=2, protocol=2),
    Route(AF4, "198.18.8.0", 24, oif=2, multipath=True),
)
NEIGHBORS = (
    Neighbor(AF4, "198.18.0.1", "02:42:c6:12:00:01", 2, state=0x80),  # permanent: sent
    Neighbor(AF4, "198.18.0.7", "02:42:c6:12:00:07", 2, state=0x02),  # reachable: learnt
    Neighbor(AF6, "ff02::2", "33:33:00:00:00:02", 2, state=0x40),  # noarp
    Neighbor(AF4, "198.18.9.1", "02:42:c6:12:09:01", 4, state=0x80),  # skipped bridge
)
SCAN = NetnsScan("/var/run/netns/pod", (ETH0, NET1, BR0), ROUTES, NEIGHBORS)


def guest_for(scan: NetnsScan, model: str = "tcfilter"):
    return guest_network(build_plan(scan, model, marker=marker("sb")), scan)


def test_interfaces_keep_name_mac_mtu_and_addresses_but_not_link_local():
    guest = guest_for(SCAN)
    assert [(i.name, i.hwAddr, i.mtu) for i in guest.interfaces] == [
        ("eth0", "02:42:c6:12:00:02", 1400), ("net1", "02:42:c6:12:01:02", 1500)]
    eth0 = guest.interfaces[0]
    assert [(a.family, a.address, a.mask) for a in eth0.IPAddresses] == [
        (types_pb2.v4, "198.18.0.2", "24"), (types_pb2.v6, "2001:2::2", "64")]


def test_two_nics_are_renamed_out_of_the_way_first():
    guest = guest_for(SCAN)
    assert [(i.name, i.hwAddr, list(i.IPAddresses)) for i in guest.renames] == [
        ("pkrn0", "02:42:c6:12:00:02", []), ("pkrn1", "02:42:c6:12:01:02", [])]
    single = NetnsScan(SCAN.path, (ETH0,), ROUTES[:2])
    assert guest_for(single).renames == []


def test_routes_through_our_interfaces():
    guest = guest_for(SCAN)
    got = [(r.dest, r.gateway, r.device, r.source, r.scope, r.family, r.mtu)
           for r in guest.routes]
    assert got == [
        ("", "198.18.0.1", "eth0", "", 0, types_pb2.v4, 0),
        ("198.18.0.0/24", "", "eth0", "198.18.0.2", 253, types_pb2.v4, 0),
        ("198.18.1.0/24", "", "net1", "198.18.1.2", 253, types_pb2.v4, 0),
        ("198.19.0.0/16", "198.18.1.1", "net1", "", 0, types_pb2.v4, 1400),
        ("2001:2::/64", "", "eth0", "", 0, types_pb2.v6, 0),
    ]
    assert guest.skipped_routes == ["198.18.8.0/24 (multipath)"]


def test_only_permanent_neighbours_of_our_interfaces():
    [neighbor] = guest_for(SCAN).neighbors
    assert (neighbor.toIPAddress.address, neighbor.device, neighbor.lladdr, neighbor.state) == (
        "198.18.0.1", "eth0", "02:42:c6:12:00:01", 0x80)


def test_no_nic_means_nothing_to_tell():
    assert guest_for(SCAN, "none").empty
    assert guest_network(build_plan(None, "tcfilter", marker=""), None).empty
