"""Test-made network namespaces (a node side and a pod side, veths between them) and a
netlink snapshot of a netns; plus tests of these helpers.

Rules (HOST-FACTS.md): only namespaces made here, both ends of every veth inside
them, addresses from 198.18.0.0/15, no default route out, deleted at the end. The
root namespace is never touched: every `ip` command names its netns with -n.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

pytestmark = pytest.mark.integration
NETNS_DIR = "/var/run/netns"
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
# the ingress hook (of an ingress or a clsact qdisc) and clsact's egress hook
INGRESS_HOOK, EGRESS_HOOK = 0xFFFFFFF2, 0xFFFFFFF3
IFA_F_TENTATIVE = 0x40


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


@dataclass
class Veth:
    """One pod interface and its node-side peer."""

    pod_if: str
    node_if: str
    pod_addr: str  # "198.18.0.2/24"
    node_addr: str
    mtu: int

    @property
    def pod_ip(self) -> str:
        return self.pod_addr.split("/")[0]

    @property
    def node_ip(self) -> str:
        return self.node_addr.split("/")[0]


@dataclass
class NetnsPair:
    """A node-side and a pod-side netns, made and deleted by the test."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    veths: list[Veth] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"pkn-{self.tag}"

    @property
    def pod(self) -> str:
        return f"pkp-{self.tag}"

    @property
    def node_path(self) -> str:
        return os.path.join(NETNS_DIR, self.node)

    @property
    def pod_path(self) -> str:
        return os.path.join(NETNS_DIR, self.pod)

    def create(self) -> NetnsPair:
        for name in (self.node, self.pod):
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
            # no IPv6 duplicate address detection on new interfaces: addresses settle at
            # once (snapshot() would otherwise wait a second or two for each netns)
            subprocess.run(
                ["nsenter", f"--net={os.path.join(NETNS_DIR, name)}", "--", "sh", "-c",
                 "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad"],
                check=True, timeout=10,
            )
        return self

    def add_veth(
        self,
        pod_if: str = "eth0",
        pod_addr: str = "198.18.0.2/24",
        node_addr: str = "198.18.0.1/24",
        *,
        mtu: int = 1400,
        gateway: bool = False,
    ) -> Veth:
        """A veth pod_if (pod side, like CNI makes) <-> vn<N> (node side), both `mtu`."""
        for addr in (pod_addr, node_addr):
            assert ipaddress.ip_interface(addr).network.subnet_of(BENCH_NET), addr
        node_if = f"vn{len(self.veths)}"
        _ip("-n", self.node, "link", "add", node_if, "mtu", str(mtu), "type", "veth",
            "peer", "name", pod_if, "netns", self.pod)
        _ip("-n", self.pod, "link", "set", pod_if, "mtu", str(mtu), "up")
        _ip("-n", self.node, "link", "set", node_if, "up")
        _ip("-n", self.pod, "addr", "add", pod_addr, "dev", pod_if)
        _ip("-n", self.node, "addr", "add", node_addr, "dev", node_if)
        if gateway:  # the node side as the pod's default gateway: it leads nowhere else
            _ip("-n", self.pod, "route", "add", "default", "via", node_addr.split("/")[0])
        veth = Veth(pod_if, node_if, pod_addr, node_addr, mtu)
        self.veths.append(veth)
        return veth

    def in_node(self, *argv: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
        """Run a command in the node-side netns."""
        return subprocess.run(
            ["nsenter", f"--net={self.node_path}", "--", *argv],
            capture_output=True, text=True, timeout=timeout, **kw,
        )

    def node_argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.node_path}", "--", *argv]

    def delete(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.created.clear()

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def _kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""


def _settle(ns: Any, timeout: float = 10.0) -> None:
    """Wait until no address is tentative (IPv6 DAD adds local routes when it ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flags = [m.get_attr("IFA_FLAGS") or m["flags"] for m in ns.get_addr()]
        if not any(f & IFA_F_TENTATIVE for f in flags):
            return
        time.sleep(0.1)


def snapshot(path: str) -> dict[str, list[tuple]]:
    """Links, addresses, routes (every table), qdiscs, filters and permanent neighbours
    of the netns at `path`, as sorted tuples with names instead of indexes (taken once
    IPv6 duplicate address detection is over, so that it does not move under us)."""
    from pyroute2 import NetNS

    with NetNS(path, flags=0) as ns:
        _settle(ns)
        links = ns.get_links()
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
        found: dict[str, list[tuple]] = {
            "links": [
                (m.get_attr("IFLA_IFNAME"), _kind(m), m.get_attr("IFLA_ADDRESS"),
                 m.get_attr("IFLA_MTU"), m["flags"] & 1, m.get_attr("IFLA_IFALIAS") or "",
                 m.get_attr("IFLA_PROMISCUITY"))
                for m in links
            ],
            "addresses": [
                (names.get(m["index"]), m["family"], m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                for m in ns.get_addr()
            ],
            "routes": [
                (m.get_attr("RTA_TABLE"), m["family"], m.get_attr("RTA_DST"), m["dst_len"],
                 m.get_attr("RTA_GATEWAY"), names.get(m.get_attr("RTA_OIF")), m["proto"],
                 m["scope"], m["type"], m.get_attr("RTA_PREFSRC"))
                for m in ns.route("dump")  # every table, both families
            ],
            "qdiscs": [
                (names.get(m["index"]), m.get_attr("TCA_KIND"), m["handle"], m["parent"])
                for m in ns.get_qdiscs()
            ],
            "filters": [
                (names.get(index), parent, m["info"] >> 16, m.get_attr("TCA_KIND"), m["handle"])
                for index in names
                for parent in (INGRESS_HOOK, EGRESS_HOOK)
                for m in ns.get_filters(index=index, parent=parent)
            ],
            "neighbours": [
                (names.get(m["ifindex"]), m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR"))
                for m in ns.get_neighbours()
                if m["state"] & 0x80
            ],
        }
    return {k: sorted(v, key=repr) for k, v in found.items()}


def redirects(path: str, ifname: str) -> list[tuple[str, int]]:
    """(target interface, packets) of every mirred action on `ifname`'s ingress hook."""
    from pyroute2 import NetNS

    found = []
    with NetNS(path, flags=0) as ns:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ns.get_links()}
        index = ns.link_lookup(ifname=ifname)[0]
        for msg in ns.get_filters(index=index, parent=INGRESS_HOOK):
            options = msg.get_attr("TCA_OPTIONS")
            actions = options.get_attr("TCA_U32_ACT") if options is not None else None
            for _, action in (actions or {"attrs": []})["attrs"]:
                if action.get_attr("TCA_ACT_KIND") != "mirred":
                    continue
                parms = action.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
                stats = action.get_attr("TCA_ACT_STATS").get_attr("TCA_STATS_BASIC")
                found.append((names.get(parms["ifindex"], "?"), stats["packets"]))
    return found


@pytest.fixture
def netns_pair():
    pair = NetnsPair().create()
    try:
        yield pair
    finally:
        pair.delete()
        assert not {pair.node, pair.pod} & set(os.listdir(NETNS_DIR))


def test_pair_is_wired_and_goes_away(netns_pair):
    veth = netns_pair.add_veth(mtu=1400, gateway=True)
    ping = netns_pair.in_node("busybox", "ping", "-c", "1", "-W", "2", veth.pod_ip)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    snap = snapshot(netns_pair.pod_path)
    assert any(link[:2] == ("eth0", "veth") and link[3] == 1400 for link in snap["links"])
    assert ("eth0", 2, "198.18.0.2", 24) in snap["addresses"]
    assert any(r[2] is None and r[4] == "198.18.0.1" for r in snap["routes"])
    assert snapshot(netns_pair.pod_path) == snap


def test_snapshot_sees_aliases_qdiscs_and_filters(netns_pair):
    netns_pair.add_veth()
    before = snapshot(netns_pair.pod_path)
    _ip("-n", netns_pair.pod, "link", "set", "eth0", "alias", "x")
    assert snapshot(netns_pair.pod_path) != before
    _ip("-n", netns_pair.pod, "link", "set", "eth0", "alias", "")
    assert snapshot(netns_pair.pod_path) == before
    tc = ["tc", "-n", netns_pair.pod]
    subprocess.run([*tc, "qdisc", "add", "dev", "eth0", "ingress"], check=True)
    subprocess.run([*tc, "filter", "add", "dev", "eth0", "parent", "ffff:", "prio", "7",
                    "protocol", "all", "u32", "match", "u32", "0", "0", "flowid", "1:1"],
                   check=True)
    snap = snapshot(netns_pair.pod_path)
    assert ("eth0", "ingress", 0xFFFF0000, 0xFFFFFFF1) in snap["qdiscs"]
    assert any(f[:4] == ("eth0", INGRESS_HOOK, 7, "u32") for f in snap["filters"])
