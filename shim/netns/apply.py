"""Carry out a plan in the pod netns with pyroute2: taps or macvtaps, ingress qdiscs,
u32 match-all filters with a mirred egress redirect. Every change is journaled first."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Any

from shim.netns.journal import Journal
from shim.netns.model import ETH_P_ALL, Endpoint, NetworkPlan, Redirect

TUNGETIFF = 0x800454D2
IFNAMSIZ = 16
MATCH_ALL = ["0x0/0x0+0"]  # u32 match u32 0 0
DEV_WAIT = 2.0  # seconds for /dev/tapN to appear after the macvtap is made


class NetworkSetupError(Exception):
    """A change to the pod netns failed; the message names the device."""


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetworkSetupError(f"no interface {name!r} in the pod netns")
    return found[0]


def _add_device(ipr: Any, ep: Endpoint, marker: str, journal: Journal) -> int:
    """Create the endpoint's tap or macvtap, mark it ours, same MTU, up; its ifindex."""
    if ep.mode == "tcfilter":
        entry = journal.add(op="link", name=ep.device, kind="tun", lower=ep.link.name)
        flags = {"no_pi": True, "vnet_hdr": True, "one_queue": False,
                 "multi_queue": ep.queues > 1}
        ipr.link("add", ifname=ep.device, kind="tuntap", mode="tap", ifr=flags)
    else:
        entry = journal.add(op="link", name=ep.device, kind="macvtap", lower=ep.link.name)
        ipr.link(
            "add",
            ifname=ep.device,
            kind="macvtap",
            link=ep.link.index,
            macvtap_mode="passthru",  # takes the veth's MAC; the veth keeps its addresses
            num_tx_queues=ep.queues,
            num_rx_queues=ep.queues,
        )
    index = _index(ipr, ep.device)
    ipr.link("set", index=index, ifalias=marker)  # first: teardown trusts only marked devices
    journal.done(entry, ifindex=index)
    ipr.link("set", index=index, mtu=ep.mtu, state="up")
    return index


def _add_redirect(ipr: Any, redirect: Redirect, journal: Journal) -> None:
    index = _index(ipr, redirect.ifname)
    target = _index(ipr, redirect.to)
    if redirect.add_qdisc:
        entry = journal.add(op="qdisc", ifname=redirect.ifname, ifindex=index)
        ipr.tc("add", "ingress", index, "ffff:")
        journal.done(entry)
    entry = journal.add(
        op="filter",
        ifname=redirect.ifname,
        ifindex=index,
        parent=redirect.parent,
        prio=redirect.prio,
        own_qdisc=redirect.add_qdisc,
    )
    ipr.tc(
        "add-filter",
        "u32",
        index,
        parent=redirect.parent,
        protocol=ETH_P_ALL,
        prio=redirect.prio,
        keys=MATCH_ALL,
        target=0x1,
        action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target},
    )
    journal.done(entry)


def open_macvtap(ifindex: int, name: str, queues: int) -> list[int]:
    """Open /dev/tap<ifindex> once per queue; check it is really `name` (TUNGETIFF)."""
    path = f"/dev/tap{ifindex}"
    deadline = time.monotonic() + DEV_WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise NetworkSetupError(f"{path} (macvtap {name}) did not appear in /dev")
        time.sleep(0.01)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fds.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        ifr = fcntl.ioctl(fds[0], TUNGETIFF, b"\0" * 40)
        found = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if found != name:
            raise NetworkSetupError(f"{path} is {found!r}, not our macvtap {name!r}")
    except BaseException:
        close_fds(fds)
        raise
    return fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def apply_plan(ipr: Any, plan: NetworkPlan, journal: Journal) -> dict[str, list[int]]:
    """Make every device and filter of the plan; the macvtap queue fds by NIC id."""
    fds: dict[str, list[int]] = {}
    try:
        for ep in plan.endpoints:
            try:
                index = _add_device(ipr, ep, plan.marker, journal)
                for redirect in ep.redirects:
                    _add_redirect(ipr, redirect, journal)
                if ep.mode == "macvtap":
                    fds[ep.nic_id] = open_macvtap(index, ep.device, ep.queues)
            except NetworkSetupError:
                raise
            except Exception as exc:
                raise NetworkSetupError(
                    f"{ep.link.name} -> {ep.device} ({ep.mode}): {exc}"
                ) from exc
    except BaseException:
        for opened in fds.values():
            close_fds(opened)
        raise
    return fds
