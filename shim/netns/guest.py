"""What the agent is told about the pod network (Kata's types.Interface/Route/ARPNeighbor),
built from the scan and the plan. Pure: no netlink, no agent."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from protos.kata import types_pb2
from shim.netns.model import NUD_PERMANENT, NetnsScan, NetworkPlan, Route

_FAMILY = {socket.AF_INET: types_pb2.v4, socket.AF_INET6: types_pb2.v6}
RENAME_PREFIX = "pkrn"


@dataclass
class GuestNetwork:
    """The agent calls, in order: renames, interfaces, routes, neighbours."""

    renames: list[types_pb2.Interface] = field(default_factory=list)
    interfaces: list[types_pb2.Interface] = field(default_factory=list)
    routes: list[types_pb2.Route] = field(default_factory=list)
    neighbors: list[types_pb2.ARPNeighbor] = field(default_factory=list)
    skipped_routes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.interfaces


def _ip(family: int, address: str, prefixlen: int | None = None) -> types_pb2.IPAddress:
    return types_pb2.IPAddress(
        family=_FAMILY.get(family, types_pb2.v4),
        address=address,
        mask="" if prefixlen is None else str(prefixlen),
    )


def _describe(route: Route) -> str:
    dst = f"{route.dst}/{route.dst_len}" if route.dst else "default"
    return f"{dst} via {route.gateway}" if route.gateway else dst


def _route(route: Route, device: str) -> types_pb2.Route:
    return types_pb2.Route(
        dest=f"{route.dst}/{route.dst_len}" if route.dst else "",
        gateway=route.gateway,
        device=device,
        source=route.prefsrc,
        scope=route.scope,
        family=_FAMILY.get(route.family, types_pb2.v4),
        mtu=route.mtu,
    )


def guest_network(plan: NetworkPlan, scan: NetnsScan | None) -> GuestNetwork:
    """Interfaces (the pod interface's name, MAC, MTU and addresses), the main-table
    routes through them (default, on-link and the rest; IPv6 link-local ones are the
    guest kernel's own), and their permanent neighbours (static ARP/NDP entries)."""
    guest = GuestNetwork()
    if scan is None or plan.empty:
        return guest
    names = {ep.link.index: ep.link.name for ep in plan.endpoints}
    for ep in plan.endpoints:
        guest.interfaces.append(
            types_pb2.Interface(
                name=ep.link.name,
                hwAddr=ep.mac,
                mtu=ep.mtu,
                IPAddresses=[
                    _ip(a.family, a.address, a.prefixlen)
                    for a in ep.link.addresses
                    if not a.link_local
                ],
            )
        )
    if len(plan.endpoints) > 1:
        # the guest kernel names NICs eth0, eth1... in its own order: move them all out of
        # the way first, so that renaming one to another's kernel name cannot clash
        guest.renames = [
            types_pb2.Interface(name=f"{RENAME_PREFIX}{i}", hwAddr=ep.mac)
            for i, ep in enumerate(plan.endpoints)
        ]
    for route in scan.routes:
        device = names.get(route.oif)
        if device is None:
            continue
        if route.family == socket.AF_INET6 and route.dst.lower().startswith("fe80:"):
            continue
        if route.multipath:
            guest.skipped_routes.append(f"{_describe(route)} (multipath)")
            continue
        guest.routes.append(_route(route, device))
    for neighbor in scan.neighbors:
        device = names.get(neighbor.ifindex)
        if device is None or not neighbor.state & NUD_PERMANENT or not neighbor.lladdr:
            continue
        guest.neighbors.append(
            types_pb2.ARPNeighbor(
                toIPAddress=_ip(neighbor.family, neighbor.address),
                device=device,
                lladdr=neighbor.lladdr,
                state=neighbor.state,
                flags=neighbor.flags,
            )
        )
    return guest
