"""The guest's network over rtnetlink, with raw AF_NETLINK sockets (no pyroute2 in the guest).

Interfaces are found by MAC (hwAddr), else by device or name, renamed, given
their MTU and addresses and brought up. Routes are replaced as a whole (every
main-table route not made by the kernel goes, the requested ones come), link
routes before gateway routes. The calls are quick kernel operations: they run
synchronously in the handler.
"""

from __future__ import annotations

import errno as errnos
import os
import socket
import struct
from dataclasses import dataclass, field

from protos.kata import types_pb2

# netlink and rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h)
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_MULTI, F_ACK = 1, 2, 4
F_REPLACE, F_EXCL, F_CREATE, F_DUMP = 0x100, 0x200, 0x400, 0x300
NEWLINK, GETLINK, SETLINK = 16, 18, 19
NEWADDR, DELADDR, GETADDR = 20, 21, 22
NEWROUTE, DELROUTE, GETROUTE = 24, 25, 26
NEWNEIGH = 28
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_INFO_KIND = 1, 3, 4, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_METRICS, RTA_TABLE = 1, 4, 5, 7, 8, 15
RTAX_MTU = 2
NDA_DST, NDA_LLADDR = 1, 2
IFF_UP = 1
RT_TABLE_MAIN, RTPROT_KERNEL, RTPROT_BOOT, RTN_UNICAST = 254, 2, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
NUD_PERMANENT = 0x80

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_RTA = struct.Struct("=HH")
_FAMILY = {types_pb2.v4: socket.AF_INET, types_pb2.v6: socket.AF_INET6}
_PROTO_FAMILY = {socket.AF_INET: types_pb2.v4, socket.AF_INET6: types_pb2.v6}


class NetworkError(Exception):
    """A request that cannot be done as asked (a bad address, a missing field)."""


class NoSuchLink(NetworkError):
    """The request names an interface the VM does not have."""


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    data = _RTA.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def attrs(data: bytes) -> dict[int, bytes]:
    """rtattrs by type (nested flag bits dropped)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode(errors="replace")


def mac_text(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def mac_bytes(text: str) -> bytes:
    try:
        return bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        raise NetworkError(f"bad MAC address {text!r}") from None


def ip_bytes(text: str) -> tuple[int, bytes]:
    """(address family, packed address) of an IPv4 or IPv6 address."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, text)
        except OSError:
            continue
    raise NetworkError(f"bad IP address {text!r}")


def prefix(text: str) -> tuple[int, bytes, int]:
    """(family, packed address, prefix length) of 'a.b.c.d/n' (n defaults to the full length)."""
    address, _, length = text.partition("/")
    family, packed = ip_bytes(address)
    bits = len(packed) * 8
    try:
        plen = int(length) if length else bits
    except ValueError:
        raise NetworkError(f"bad prefix length in {text!r}") from None
    if not 0 <= plen <= bits:
        raise NetworkError(f"bad prefix length in {text!r}")
    return family, packed, plen


@dataclass(slots=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    kind: str


@dataclass(slots=True)
class Address:
    index: int
    family: int
    address: str
    prefix: int


@dataclass(slots=True)
class RouteEntry:
    family: int
    dest: str  # "" for the default route
    dst_len: int
    gateway: str
    oif: int
    source: str
    scope: int
    protocol: int
    table: int
    flags: int
    mtu: int
    raw: dict[int, bytes] = field(repr=False, default_factory=dict)


class Netlink:
    """One NETLINK_ROUTE socket; request() sends a message and collects the answer."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one message; the (type, payload) answers of a dump, or [] after an ACK."""
        self._seq += 1
        dump = flags & F_DUMP == F_DUMP
        flags |= F_REQUEST | (0 if dump else F_ACK)
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, flags, self._seq, 0) + body)
        answers: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _, seq, _ = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size : offset + length]
                offset += (length + 3) & ~3
                if seq != self._seq:
                    continue
                if mtype == NLMSG_DONE:
                    return answers
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return answers
                answers.append((mtype, payload))

    # -- links -------------------------------------------------------------------
    def links(self) -> list[Link]:
        found = []
        for _, payload in self.request(GETLINK, F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0)):
            _, _, index, flags, _ = _IFINFO.unpack_from(payload)
            info = attrs(payload[_IFINFO.size :])
            kind = attrs(info.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND, b"")
            found.append(
                Link(
                    index=index,
                    name=cstr(info.get(IFLA_IFNAME, b"")),
                    flags=flags,
                    mtu=struct.unpack("=I", info[IFLA_MTU])[0] if IFLA_MTU in info else 0,
                    mac=mac_text(info.get(IFLA_ADDRESS, b"")),
                    kind=cstr(kind),
                )
            )
        return found

    def set_link(self, index: int, *, up: bool | None = None, name: str = "", mtu: int = 0) -> None:
        body = _IFINFO.pack(0, 0, index, IFF_UP if up else 0, IFF_UP if up is not None else 0)
        if name:
            body += attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu:
            body += attr(IFLA_MTU, struct.pack("=I", mtu))
        self.request(SETLINK, 0, body)

    # -- addresses ---------------------------------------------------------------
    def addresses(self) -> list[Address]:
        found = []
        for _, payload in self.request(GETADDR, F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, plen, _, _, index = _IFADDR.unpack_from(payload)
            info = attrs(payload[_IFADDR.size :])
            packed = info.get(IFA_LOCAL) or info.get(IFA_ADDRESS)
            if packed:
                found.append(Address(index, family, socket.inet_ntop(family, packed), plen))
        return found

    def address(self, add: bool, index: int, family: int, packed: bytes, plen: int) -> None:
        body = _IFADDR.pack(family, plen, 0, 0, index)
        body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
        if add:
            self.request(NEWADDR, F_CREATE | F_REPLACE, body)
        else:
            self.request(DELADDR, 0, body)

    # -- routes ------------------------------------------------------------------
    def routes(self) -> list[RouteEntry]:
        """Unicast routes of the main table."""
        found = []
        for _, payload in self.request(GETROUTE, F_DUMP, _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)):
            family, dst_len, _, _, table, protocol, scope, rtype, flags = _RTMSG.unpack_from(
                payload
            )
            info = attrs(payload[_RTMSG.size :])
            if RTA_TABLE in info:
                table = struct.unpack("=I", info[RTA_TABLE])[0]
            if table != RT_TABLE_MAIN or rtype != RTN_UNICAST:
                continue

            def text(kind: int, info: dict[int, bytes] = info, family: int = family) -> str:
                return socket.inet_ntop(family, info[kind]) if kind in info else ""

            metrics = attrs(info.get(RTA_METRICS, b""))
            found.append(
                RouteEntry(
                    family=family,
                    dest=f"{text(RTA_DST)}/{dst_len}" if RTA_DST in info else "",
                    dst_len=dst_len,
                    gateway=text(RTA_GATEWAY),
                    oif=struct.unpack("=i", info[RTA_OIF])[0] if RTA_OIF in info else 0,
                    source=text(RTA_PREFSRC),
                    scope=scope,
                    protocol=protocol,
                    table=table,
                    flags=flags,
                    mtu=struct.unpack("=I", metrics[RTAX_MTU])[0] if RTAX_MTU in metrics else 0,
                    raw=info,
                )
            )
        return found

    def delete_route(self, route: RouteEntry) -> None:
        body = _RTMSG.pack(
            route.family,
            route.dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            route.protocol,
            route.scope,
            RTN_UNICAST,
            0,
        )
        for kind in (RTA_DST, RTA_GATEWAY, RTA_OIF):
            if kind in route.raw:
                body += attr(kind, route.raw[kind])
        self.request(DELROUTE, 0, body)

    def add_route(
        self,
        *,
        family: int,
        dest: bytes | None,
        dst_len: int,
        gateway: bytes | None,
        oif: int,
        source: bytes | None,
        scope: int,
        mtu: int,
    ) -> None:
        body = _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if dest is not None and dst_len:
            body += attr(RTA_DST, dest)
        if gateway:
            body += attr(RTA_GATEWAY, gateway)
        if oif:
            body += attr(RTA_OIF, struct.pack("=i", oif))
        if source:
            body += attr(RTA_PREFSRC, source)
        if mtu:
            body += attr(RTA_METRICS, attr(RTAX_MTU, struct.pack("=I", mtu)))
        self.request(NEWROUTE, F_CREATE | F_REPLACE, body)

    # -- neighbours ----------------------------------------------------------------
    def add_neighbor(
        self, index: int, family: int, packed: bytes, lladdr: bytes, state: int, flags: int
    ) -> None:
        body = _NDMSG.pack(family, index, state or NUD_PERMANENT, flags, 0)
        body += attr(NDA_DST, packed)
        if lladdr:
            body += attr(NDA_LLADDR, lladdr)
        self.request(NEWNEIGH, F_CREATE | F_REPLACE, body)


# -- the agent API's view ----------------------------------------------------------
def _interface(link: Link, addresses: list[Address]) -> types_pb2.Interface:
    return types_pb2.Interface(
        device=link.name,
        name=link.name,
        IPAddresses=[
            types_pb2.IPAddress(
                family=_PROTO_FAMILY.get(a.family, types_pb2.v4),
                address=a.address,
                mask=str(a.prefix),
            )
            for a in addresses
            if a.index == link.index
        ],
        mtu=link.mtu,
        hwAddr=link.mac,
        type=link.kind,
        raw_flags=link.flags,
    )


def list_interfaces() -> list[types_pb2.Interface]:
    with Netlink() as nl:
        addresses = nl.addresses()
        return [_interface(link, addresses) for link in nl.links()]


def _find_link(links: list[Link], iface: types_pb2.Interface) -> Link:
    if iface.hwAddr:
        wanted = iface.hwAddr.lower()
        for link in links:
            if link.mac == wanted:
                return link
        raise NoSuchLink(f"no interface with MAC {iface.hwAddr}")
    for name in (iface.device, iface.name):
        if name:
            for link in links:
                if link.name == name:
                    return link
            raise NoSuchLink(f"no interface named {name!r}")
    raise NetworkError("interface has neither hwAddr nor device nor name")


def update_interface(iface: types_pb2.Interface) -> types_pb2.Interface:
    """Find the link, then set its name, MTU and addresses (replacing the old ones), up."""
    wanted = [prefix(f"{a.address}/{a.mask}" if a.mask else a.address) for a in iface.IPAddresses]
    with Netlink() as nl:
        link = _find_link(nl.links(), iface)
        if iface.name and iface.name != link.name:
            nl.set_link(link.index, up=False)
            nl.set_link(link.index, name=iface.name)
        if iface.mtu and iface.mtu != link.mtu:
            nl.set_link(link.index, mtu=int(iface.mtu))
        keep = {(f, p, n) for f, p, n in wanted}
        for old in nl.addresses():
            if old.index != link.index:
                continue
            packed = socket.inet_pton(old.family, old.address)
            if (old.family, packed, old.prefix) in keep:
                continue
            if old.family == socket.AF_INET6 and old.address.startswith("fe80:"):
                continue  # the kernel's link-local address stays
            nl.address(False, link.index, old.family, packed, old.prefix)
        for family, packed, plen in wanted:
            nl.address(True, link.index, family, packed, plen)
        nl.set_link(link.index, up=True)
        current = next(x for x in nl.links() if x.index == link.index)
        return _interface(current, nl.addresses())


def _route(entry: RouteEntry, names: dict[int, str]) -> types_pb2.Route:
    return types_pb2.Route(
        dest=entry.dest,
        gateway=entry.gateway,
        device=names.get(entry.oif, ""),
        source=entry.source,
        scope=entry.scope,
        family=_PROTO_FAMILY.get(entry.family, types_pb2.v4),
        flags=entry.flags,
        mtu=entry.mtu,
    )


def list_routes() -> list[types_pb2.Route]:
    with Netlink() as nl:
        names = {link.index: link.name for link in nl.links()}
        return [_route(entry, names) for entry in nl.routes()]


def update_routes(routes: list[types_pb2.Route]) -> list[types_pb2.Route]:
    """Replace every non-kernel main-table route with the requested ones."""
    with Netlink() as nl:
        indexes = {link.name: link.index for link in nl.links()}
        plans = []
        for route in routes:
            if route.device and route.device not in indexes:
                raise NoSuchLink(f"route {route.dest or 'default'}: no device {route.device!r}")
            family = _FAMILY.get(route.family, socket.AF_INET)
            dest, dst_len = None, 0
            if route.dest and route.dest != "default":
                family, dest, dst_len = prefix(route.dest)
            gateway = ip_bytes(route.gateway)[1] if route.gateway else None
            source = ip_bytes(route.source)[1] if route.source else None
            scope = route.scope
            if not scope and not gateway and route.device:
                scope = RT_SCOPE_LINK
            plans.append(
                {
                    "family": family,
                    "dest": dest,
                    "dst_len": dst_len,
                    "gateway": gateway,
                    "oif": indexes.get(route.device, 0),
                    "source": source,
                    "scope": scope,
                    "mtu": route.mtu,
                }
            )
        for old in nl.routes():
            if old.protocol != RTPROT_KERNEL:
                try:
                    nl.delete_route(old)
                except OSError as exc:
                    if exc.errno != errnos.ESRCH:
                        raise
        plans.sort(key=lambda plan: plan["gateway"] is not None)  # link routes first
        for plan in plans:
            nl.add_route(**plan)
        names = {index: name for name, index in indexes.items()}
        return [_route(entry, names) for entry in nl.routes()]


def add_neighbors(neighbors: list[types_pb2.ARPNeighbor]) -> None:
    with Netlink() as nl:
        indexes = {link.name: link.index for link in nl.links()}
        for neighbor in neighbors:
            if neighbor.device not in indexes:
                raise NoSuchLink(f"ARP neighbor: no device {neighbor.device!r}")
            family, packed = ip_bytes(neighbor.toIPAddress.address)
            nl.add_neighbor(
                indexes[neighbor.device],
                family,
                packed,
                mac_bytes(neighbor.lladdr) if neighbor.lladdr else b"",
                neighbor.state,
                neighbor.flags,
            )
