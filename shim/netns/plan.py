"""From a scanned pod netns to a plan: which devices, which tc filters, which guest NICs.

Pure: no netlink, no files. The same scan always gives the same plan, so every
model (tcfilter, macvtap, none) and every odd netns can be tested without a kernel.
"""

from __future__ import annotations

from shim.netns.model import (
    CLSACT_INGRESS_PARENT,
    DEFAULT_PRIO,
    INGRESS_PARENT,
    Endpoint,
    Link,
    Mode,
    Model,
    NetnsScan,
    NetworkPlan,
    Redirect,
    Skipped,
)
from shim.vmm.vm_config import NicSpec

MARKER_PREFIX = "pykata:"
MAX_QUEUES = 16
# kinds whose frames a tap can carry with tc redirect (Kata's veth, macvlan, ipvlan endpoints)
TCFILTER_KINDS = ("veth", "macvlan", "ipvlan")
# a macvtap in passthru mode can take over a veth; macvlan and ipvlan fall back to tcfilter
MACVTAP_KINDS = ("veth",)
DEVICE_NAME = "tap{}_kata"


def marker(sandbox_id: str) -> str:
    """The ifalias that marks a device as created by pykata for this sandbox."""
    return f"{MARKER_PREFIX}{sandbox_id}"[:255]


def _queues(vcpus: int) -> int:
    return max(1, min(vcpus, MAX_QUEUES))


def _ingress_redirect(link: Link, to: str) -> Redirect | str:
    """The filter that sends the pod interface's frames to `to`; a str says why not."""
    if not link.ingress:
        return Redirect(link.name, to, add_qdisc=True)
    parent = CLSACT_INGRESS_PARENT if link.ingress == "clsact" else INGRESS_PARENT
    prio = DEFAULT_PRIO
    if link.ingress_prios:
        lowest = min(link.ingress_prios)
        if lowest <= 1:
            return f"its {link.ingress} qdisc already has a filter at prio 1 (ours must run first)"
        prio = min(lowest - 1, DEFAULT_PRIO)
    return Redirect(link.name, to, add_qdisc=False, parent=parent, prio=prio)


def _skip_reason(link: Link) -> str | None:
    if link.alias.startswith(MARKER_PREFIX):
        return "it was created by pykata"
    if link.kind not in TCFILTER_KINDS:
        kind = link.kind or "a device without a link kind"
        return f"{kind!r} interfaces are not supported (veth, macvlan, ipvlan are)"
    if not link.mac or link.mac == "00:00:00:00:00:00":
        return "it has no MAC address"
    return None


def build_plan(
    scan: NetnsScan | None,
    model: Model,
    *,
    marker: str,
    vcpus: int = 1,
    vhost_net: bool = False,
) -> NetworkPlan:
    """The plan for a pod netns (`scan` None: the spec named no netns)."""
    if scan is None:
        note = "no network namespace path in the OCI spec: the VM gets no NIC (lo only)"
        return NetworkPlan(None, model, marker, notes=(note,))
    if model == "none":
        note = "internetworking_model = none: the VM gets no NIC"
        return NetworkPlan(scan.path, model, marker, notes=(note,))
    used = {link.name for link in scan.links}
    endpoints: list[Endpoint] = []
    skipped: list[Skipped] = []
    number = 0
    for link in sorted(scan.links, key=lambda x: x.index):
        if link.name == "lo":
            continue
        reason = _skip_reason(link)
        if reason is not None:
            skipped.append(Skipped(link.name, link.kind, reason))
            continue
        while DEVICE_NAME.format(number) in used:
            number += 1
        device = DEVICE_NAME.format(number)
        mode: Mode = "macvtap" if model == "macvtap" and link.kind in MACVTAP_KINDS else "tcfilter"
        redirects: tuple[Redirect, ...] = ()
        if mode == "tcfilter":
            inbound = _ingress_redirect(link, device)
            if isinstance(inbound, str):
                skipped.append(Skipped(link.name, link.kind, inbound))
                continue
            redirects = (inbound, Redirect(device, link.name, add_qdisc=True))
        used.add(device)
        endpoints.append(
            Endpoint(
                link=link,
                mode=mode,
                device=device,
                nic_id=f"net{len(endpoints)}",
                queues=_queues(vcpus),
                vhost=vhost_net,
                redirects=redirects,
            )
        )
        number += 1
    notes: tuple[str, ...] = ()
    if not endpoints:
        notes = (f"no supported interface in {scan.path}: the VM gets no NIC",)
    return NetworkPlan(scan.path, model, marker, tuple(endpoints), tuple(skipped), notes)


def fallbacks(plan: NetworkPlan) -> list[str]:
    """Interfaces the macvtap model carries with tcfilter (ipvlan, macvlan), for the log."""
    if plan.model != "macvtap":
        return []
    return [ep.link.name for ep in plan.endpoints if ep.mode == "tcfilter"]


def nic_specs(plan: NetworkPlan, fds: dict[str, list[int]] | None = None) -> list[NicSpec]:
    """The QEMU NICs of a plan: a tap by name (QEMU runs in the pod netns and opens it),
    a macvtap by the fds of its /dev/tapN queues (`fds` by nic id, opened at apply)."""
    specs = []
    for ep in plan.endpoints:
        common = {"mac": ep.mac, "id": ep.nic_id, "vhost": ep.vhost, "mtu": ep.mtu}
        if ep.mode == "tcfilter":
            specs.append(NicSpec(ifname=ep.device, queues=ep.queues, **common))
            continue
        queue_fds = (fds or {}).get(ep.nic_id)
        if not queue_fds:
            raise ValueError(f"macvtap {ep.device} has no open queue")
        if len(queue_fds) == 1:
            specs.append(NicSpec(tap_fd=queue_fds[0], **common))
        else:
            specs.append(NicSpec(tap_fds=tuple(queue_fds), **common))
    return specs
