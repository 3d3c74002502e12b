"""What a scanned pod netns holds and what we plan to add to it: plain data, no I/O."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal

Model = Literal["tcfilter", "macvtap", "none"]
Mode = Literal["tcfilter", "macvtap"]

# the ingress hook of a qdisc: "ffff:" for an ingress qdisc, "ffff:fff2" for clsact
INGRESS_PARENT = 0xFFFF0000
CLSACT_INGRESS_PARENT = 0xFFFFFFF2
DEFAULT_PRIO = 49152  # what tc picks when no prio is given (Kata's filters have it)
ETH_P_ALL = 0x0003
NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class IPAddr:
    """An address on an interface, with its prefix length."""

    family: int  # socket.AF_INET or AF_INET6
    address: str
    prefixlen: int

    @property
    def link_local(self) -> bool:
        return self.family == socket.AF_INET6 and self.address.lower().startswith("fe80:")


@dataclass(frozen=True)
class Link:
    """One interface of the netns, as netlink reported it."""

    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "veth", "macvlan", "tun", ...; "" when the kernel gives none
    mac: str
    mtu: int
    up: bool = True
    addresses: tuple[IPAddr, ...] = ()
    alias: str = ""
    ingress: str = ""  # qdisc already on the ingress hook: "", "ingress" or "clsact"
    ingress_prios: tuple[int, ...] = ()  # prios of the filters already on that hook


@dataclass(frozen=True)
class Route:
    """A unicast route of the main table."""

    family: int
    dst: str  # "" for the default route
    dst_len: int
    gateway: str = ""
    oif: int = 0
    prefsrc: str = ""
    scope: int = 0
    protocol: int = 0
    mtu: int = 0
    multipath: bool = False


@dataclass(frozen=True)
class Neighbor:
    """A neighbour (ARP/NDP) entry."""

    family: int
    address: str
    lladdr: str
    ifindex: int
    state: int
    flags: int = 0


@dataclass(frozen=True)
class NetnsScan:
    """Everything the plan needs to know about a pod netns."""

    path: str
    links: tuple[Link, ...] = ()
    routes: tuple[Route, ...] = ()
    neighbors: tuple[Neighbor, ...] = ()

    def link(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)


@dataclass(frozen=True)
class Redirect:
    """The ingress hook of `ifname` gets a match-all u32 filter that redirects every
    frame to the egress of `to` (tc ... u32 match u32 0 0 action mirred egress redirect)."""

    ifname: str
    to: str
    add_qdisc: bool  # False: an ingress/clsact qdisc is already there and is reused
    parent: int = INGRESS_PARENT
    prio: int = DEFAULT_PRIO


@dataclass(frozen=True)
class Endpoint:
    """One pod interface and the device that carries it into the VM as one NIC."""

    link: Link  # the pod's interface (its MAC, MTU and addresses go to the guest)
    mode: Mode
    device: str  # the tap or macvtap we create: tapN_kata
    nic_id: str  # QEMU netdev id
    queues: int = 1
    vhost: bool = False
    redirects: tuple[Redirect, ...] = ()

    @property
    def mac(self) -> str:
        return self.link.mac

    @property
    def mtu(self) -> int:
        return self.link.mtu


@dataclass(frozen=True)
class Skipped:
    """An interface that gets no NIC, and why (logged as a warning)."""

    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class NetworkPlan:
    """What to add to the pod netns and what the VM gets; built by plan.build_plan."""

    netns: str | None
    model: Model
    marker: str  # ifalias of every device we create: proves it is ours at teardown
    endpoints: tuple[Endpoint, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = field(default=())  # why nothing is planned, for the log

    @property
    def empty(self) -> bool:
        return not self.endpoints
