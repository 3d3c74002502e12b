"""Read a pod netns over rtnetlink (pyroute2): links, addresses, routes, neighbours, and
which ingress hooks are already taken. Imported only when a netns is really scanned."""

from __future__ import annotations

from typing import Any

from shim.netns.model import (
    CLSACT_INGRESS_PARENT,
    INGRESS_PARENT,
    IPAddr,
    Link,
    Neighbor,
    NetnsScan,
    Route,
)

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTAX_MTU = "RTAX_MTU"


def _kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""


def _addresses(ipr: Any) -> dict[int, list[IPAddr]]:
    found: dict[int, list[IPAddr]] = {}
    for msg in ipr.get_addr():
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if address:
            found.setdefault(msg["index"], []).append(
                IPAddr(msg["family"], address, msg["prefixlen"])
            )
    return found


def _ingress(ipr: Any) -> dict[int, tuple[str, tuple[int, ...]]]:
    """Per ifindex: the qdisc kind on the ingress hook and the prios of its filters."""
    found: dict[int, tuple[str, tuple[int, ...]]] = {}
    for msg in ipr.get_qdiscs():
        kind = msg.get_attr("TCA_KIND")
        if kind not in ("ingress", "clsact"):
            continue
        parent = CLSACT_INGRESS_PARENT if kind == "clsact" else INGRESS_PARENT
        prios = {f["info"] >> 16 for f in ipr.get_filters(index=msg["index"], parent=parent)}
        found[msg["index"]] = (kind, tuple(sorted(prios)))
    return found


def _links(ipr: Any) -> tuple[Link, ...]:
    addresses = _addresses(ipr)
    ingress = _ingress(ipr)
    links = []
    for msg in ipr.get_links():
        index = msg["index"]
        hook, prios = ingress.get(index, ("", ()))
        links.append(
            Link(
                index=index,
                name=msg.get_attr("IFLA_IFNAME") or "",
                kind=_kind(msg),
                mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                mtu=msg.get_attr("IFLA_MTU") or 0,
                up=bool(msg["flags"] & IFF_UP),
                addresses=tuple(addresses.get(index, ())),
                alias=msg.get_attr("IFLA_IFALIAS") or "",
                ingress=hook,
                ingress_prios=prios,
            )
        )
    return tuple(links)


def _routes(ipr: Any) -> tuple[Route, ...]:
    routes = []
    for msg in ipr.get_routes(table=RT_TABLE_MAIN):
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if table != RT_TABLE_MAIN or msg["type"] != RTN_UNICAST:
            continue
        metrics = msg.get_attr("RTA_METRICS")
        mtu = (metrics.get_attr(RTAX_MTU) if metrics is not None else None) or 0
        routes.append(
            Route(
                family=msg["family"],
                dst=msg.get_attr("RTA_DST") or "",
                dst_len=msg["dst_len"],
                gateway=msg.get_attr("RTA_GATEWAY") or "",
                oif=msg.get_attr("RTA_OIF") or 0,
                prefsrc=msg.get_attr("RTA_PREFSRC") or "",
                scope=msg["scope"],
                protocol=msg["proto"],
                mtu=mtu,
                multipath=msg.get_attr("RTA_MULTIPATH") is not None,
            )
        )
    return tuple(routes)


def _neighbors(ipr: Any) -> tuple[Neighbor, ...]:
    found = []
    for msg in ipr.get_neighbours():
        address = msg.get_attr("NDA_DST")
        if address:
            found.append(
                Neighbor(
                    family=msg["family"],
                    address=address,
                    lladdr=(msg.get_attr("NDA_LLADDR") or "").lower(),
                    ifindex=msg["ifindex"],
                    state=msg["state"],
                    flags=msg["flags"],
                )
            )
    return tuple(found)


def scan(ipr: Any, path: str) -> NetnsScan:
    """Everything the plan needs from the netns `ipr` is bound to."""
    return NetnsScan(path, _links(ipr), _routes(ipr), _neighbors(ipr))
