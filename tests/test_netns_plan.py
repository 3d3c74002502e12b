"""The netlink plan for a scanned pod netns, as pure data: devices, filters, QEMU NICs."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shim.netns.model import (
    CLSACT_INGRESS_PARENT,
    DEFAULT_PRIO,
    INGRESS_PARENT,
    IPAddr,
    Link,
    NetnsScan,
    Redirect,
)
from shim.netns.plan import build_plan, fallbacks, marker, nic_specs
from shim.vmm.layout import VMPaths
from shim.vmm.qemu_args import SerialChannel, build_argv, passed_fds
from shim.vmm.vm_config import TCG_CPU_MODEL, VMConfig

ROOT = Path(__file__).resolve().parent.parent
NETNS = "/var/run/netns/pod"
MARK = marker("sb1")
MAC = "02:42:c6:12:00:02"
LO = Link(1, "lo", "", "00:00:00:00:00:00", 65536)
ETH0 = Link(2, "eth0", "veth", MAC, 1400,
            addresses=(IPAddr(socket.AF_INET, "198.18.0.2", 24),))


def scan_of(*links: Link) -> NetnsScan:
    return NetnsScan(NETNS, (LO, *links))


def plan_for(*links: Link, model="tcfilter", **kw):
    return build_plan(scan_of(*links), model, marker=MARK, **kw)


def qemu_net_args(plan, fds=None) -> list[str]:
    config = VMConfig(nics=nic_specs(plan, fds))
    paths = VMPaths(Path("/run/pykata/ns/sb1"))
    argv = build_argv(config, paths, accel="tcg", cpu=TCG_CPU_MODEL,
                      channel=SerialChannel(paths.agent_socket))
    picked = []
    for flag, value in itertools.pairwise(argv):
        if flag == "-netdev" or (flag == "-device" and value.startswith("virtio-net")):
            picked += [flag, value]
    return picked


def test_veth_gets_a_tap_two_redirects_and_a_nic_by_name():
    plan = plan_for(ETH0)
    [ep] = plan.endpoints
    assert (ep.link.name, ep.mode, ep.device, ep.nic_id, ep.queues, ep.vhost) == (
        "eth0", "tcfilter", "tap0_kata", "net0", 1, False)
    assert ep.redirects == (
        Redirect("eth0", "tap0_kata", add_qdisc=True, parent=INGRESS_PARENT, prio=DEFAULT_PRIO),
        Redirect("tap0_kata", "eth0", add_qdisc=True, parent=INGRESS_PARENT, prio=DEFAULT_PRIO),
    )
    assert plan.skipped == () and plan.notes == () and plan.marker == "pykata:sb1"
    assert qemu_net_args(plan) == [
        "-netdev", "tap,id=net0,ifname=tap0_kata,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={MAC},id=dev-net0,romfile=,host_mtu=1400",
    ]


def test_multi_queue_and_vhost_follow_the_vm():
    plan = plan_for(ETH0, vcpus=4, vhost_net=True)
    assert plan.endpoints[0].queues == 4
    netdev, device = qemu_net_args(plan)[1::2]
    assert netdev == "tap,id=net0,ifname=tap0_kata,script=no,downscript=no,queues=4,vhost=on"
    assert ",mq=on,vectors=10," in device


def test_macvtap_has_no_filters_and_goes_by_fd():
    plan = plan_for(ETH0, model="macvtap")
    [ep] = plan.endpoints
    assert (ep.mode, ep.device, ep.redirects) == ("macvtap", "tap0_kata", ())
    with pytest.raises(ValueError, match="no open queue"):
        nic_specs(plan)
    assert qemu_net_args(plan, {"net0": [7]})[1] == "tap,id=net0,fd=7"
    multi = plan_for(ETH0, model="macvtap", vcpus=2)
    args = qemu_net_args(multi, {"net0": [7, 8]})
    assert args[1] == "tap,id=net0,fds=7:8"
    assert ",mq=on,vectors=6," in args[3]
    assert passed_fds(VMConfig(nics=nic_specs(multi, {"net0": [7, 8]})), SerialChannel(Path())) \
        == [7, 8]


def test_macvtap_model_keeps_tcfilter_for_ipvlan_and_macvlan():
    ipvlan = Link(3, "net1", "ipvlan", "02:42:c6:12:00:03", 1500)
    plan = plan_for(ETH0, ipvlan, model="macvtap")
    assert [(ep.link.name, ep.mode) for ep in plan.endpoints] == [
        ("eth0", "macvtap"), ("net1", "tcfilter")]
    assert fallbacks(plan) == ["net1"]


def test_model_none_and_no_netns_give_no_nic():
    none = plan_for(ETH0, model="none")
    assert none.empty and none.netns == NETNS and "none" in none.notes[0]
    assert nic_specs(none) == [] and qemu_net_args(none) == []
    nothing = build_plan(None, "tcfilter", marker=MARK)
    assert nothing.empty and nothing.netns is None and "lo only" in nothing.notes[0]


@pytest.mark.parametrize("kind", ["bridge", "tun", "dummy", "vxlan", ""])
def test_unsupported_kinds_are_skipped_by_name(kind):
    odd = Link(3, "odd0", kind, "02:42:c6:12:00:09", 1500)
    plan = plan_for(ETH0, odd)
    assert [ep.link.name for ep in plan.endpoints] == ["eth0"]
    [skipped] = plan.skipped
    assert (skipped.name, skipped.kind) == ("odd0", kind)
    assert (repr(kind) if kind else "without a link kind") in skipped.reason


def test_only_unsupported_interfaces_means_no_nic():
    plan = plan_for(Link(3, "br0", "bridge", "02:42:c6:12:00:09", 1500))
    assert plan.empty and "no supported interface" in plan.notes[0]


def test_our_own_devices_and_taken_names():
    ours = Link(3, "tap0_kata", "tun", "02:42:c6:12:00:04", 1400, alias=MARK)
    plan = plan_for(ETH0, ours)
    assert [ep.device for ep in plan.endpoints] == ["tap1_kata"]
    assert plan.skipped[0].reason == "it was created by pykata"


def test_an_ingress_hook_already_in_use():
    taken = Link(2, "eth0", "veth", MAC, 1400, ingress="ingress", ingress_prios=(7, 20))
    [ep] = plan_for(taken).endpoints
    assert ep.redirects[0] == Redirect("eth0", "tap0_kata", add_qdisc=False,
                                       parent=INGRESS_PARENT, prio=6)
    clsact = Link(2, "eth0", "veth", MAC, 1400, ingress="clsact")
    [ep] = plan_for(clsact).endpoints
    assert ep.redirects[0] == Redirect("eth0", "tap0_kata", add_qdisc=False,
                                       parent=CLSACT_INGRESS_PARENT, prio=DEFAULT_PRIO)
    first = Link(2, "eth0", "veth", MAC, 1400, ingress="ingress", ingress_prios=(1,))
    plan = plan_for(first)
    assert plan.empty and "prio 1" in plan.skipped[0].reason


def test_two_interfaces_two_nics_in_index_order():
    net1 = Link(5, "net1", "veth", "02:42:c6:12:01:02", 9000)
    plan = plan_for(net1, ETH0)
    assert [(ep.link.name, ep.device, ep.nic_id) for ep in plan.endpoints] == [
        ("eth0", "tap0_kata", "net0"), ("net1", "tap1_kata", "net1")]
    assert [nic.mtu for nic in nic_specs(plan)] == [1400, 9000]


def test_the_teardown_entry_point_does_not_import_pyroute2(tmp_path):
    code = (
        "import sys, shim.delete, shim.netns; "
        f"assert shim.netns.teardown_state({str(tmp_path)!r}) == []; "
        "print('pyroute2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
