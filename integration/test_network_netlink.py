"""shim.netns against real netlink, without a VM: what setup adds to a test-made pod
netns, and that teardown (also from a half-done journal) leaves it as it was."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from integration.test_network_env import NetnsPair, redirects, snapshot
from shim.netns import teardown_state
from shim.netns.apply import NetworkSetupError, apply_plan, close_fds
from shim.netns.journal import STATE_FILE, Journal
from shim.netns.model import Endpoint, Link
from shim.netns.nsenter import NetnsGone, in_netns, open_netns
from shim.netns.plan import build_plan, marker
from shim.netns.pod import setup
from shim.netns.scan import scan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
SANDBOX = "sb-netlink-test"


@pytest.fixture
def pair():
    with NetnsPair() as made:
        yield made


def run_setup(**kw):
    """shim.netns.pod.setup in an event loop of its own (the tests call pyroute2's sync API,
    which cannot run inside a running loop)."""
    return asyncio.run(setup(**kw))


def links(path: str) -> dict[str, tuple]:
    return {link[0]: link for link in snapshot(path)["links"]}


def tc(pair: NetnsPair, *argv: str) -> None:
    subprocess.run(["tc", "-n", pair.pod, *argv], check=True, capture_output=True)


def test_tcfilter_adds_a_tap_two_redirects_and_teardown_restores(pair, tmp_path):
    veth = pair.add_veth(mtu=1400, gateway=True)
    before = snapshot(pair.pod_path)
    own_netns = os.readlink("/proc/thread-self/ns/net")
    net = run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX)
    assert os.readlink("/proc/thread-self/ns/net") == own_netns
    try:
        now = links(pair.pod_path)
        _, kind, _, mtu, up, alias, _ = now["tap0_kata"]
        assert (kind, mtu, up, alias) == ("tun", 1400, 1, marker(SANDBOX))
        assert [r[0] for r in redirects(pair.pod_path, "eth0")] == ["tap0_kata"]
        assert [r[0] for r in redirects(pair.pod_path, "tap0_kata")] == ["eth0"]
        eth0_mac = now["eth0"][2]
        [nic] = net.nics
        assert (nic.ifname, nic.mac, nic.mtu, nic.queues, nic.tap_fd) == (
            "tap0_kata", eth0_mac, 1400, 1, None)
        [iface] = net.guest.interfaces
        assert (iface.name, iface.hwAddr, iface.mtu) == ("eth0", eth0_mac, 1400)
        assert [(a.address, a.mask) for a in iface.IPAddresses] == [("198.18.0.2", "24")]
        routes = {(r.dest, r.gateway, r.device) for r in net.guest.routes}
        assert ("", veth.node_ip, "eth0") in routes
        assert ("198.18.0.0/24", "", "eth0") in routes
        # the node's view is unchanged: the veth keeps its address
        assert ("eth0", 2, "198.18.0.2", 24) in snapshot(pair.pod_path)["addresses"]
        journal = json.loads((tmp_path / STATE_FILE).read_text())
        assert [e["op"] for e in journal["entries"]] == [
            "link", "qdisc", "filter", "qdisc", "filter"]
        assert all(e["done"] for e in journal["entries"])
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    assert snapshot(pair.pod_path) == before
    assert not (tmp_path / STATE_FILE).exists()
    assert teardown_state(tmp_path) == []  # idempotent
    assert os.readlink("/proc/thread-self/ns/net") == own_netns


def test_entering_a_missing_netns_names_it():
    with pytest.raises(NetnsGone, match="/var/run/netns/pk-none-such"), \
            in_netns("/var/run/netns/pk-none-such"):
        pass


def test_multi_queue_tap_when_the_vm_has_vcpus(pair, tmp_path):
    pair.add_veth()
    before = snapshot(pair.pod_path)
    net = run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX, vcpus=2)
    try:
        [nic] = net.nics
        assert nic.queues == 2
        detail = subprocess.run(["ip", "-n", pair.pod, "-d", "link", "show", "tap0_kata"],
                                capture_output=True, text=True).stdout
        assert "multi_queue" in detail, detail
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    assert snapshot(pair.pod_path) == before


def test_macvtap_hands_over_open_queues_and_goes_away(pair, tmp_path):
    pair.add_veth()
    before = snapshot(pair.pod_path)
    net = run_setup(model="macvtap", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX, vcpus=2)
    try:
        now = links(pair.pod_path)
        assert now["tap0_kata"][1] == "macvtap"
        assert now["tap0_kata"][2] == now["eth0"][2]  # passthru: the veth's MAC
        assert redirects(pair.pod_path, "eth0") == []  # no tc in this model
        [nic] = net.nics
        assert len(nic.tap_fds) == 2 and nic.mac == now["eth0"][2]
        for fd in nic.tap_fds:
            os.fstat(fd)
        with open_netns(pair.pod_path) as ipr:
            index = ipr.link_lookup(ifname="tap0_kata")[0]
        assert os.path.exists(f"/dev/tap{index}")
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    assert net.fds == {}
    assert not os.path.exists(f"/dev/tap{index}")
    assert snapshot(pair.pod_path) == before


@pytest.mark.parametrize("qdisc", ["ingress", "clsact"])
def test_existing_ingress_qdisc_is_reused_and_kept(pair, tmp_path, qdisc):
    pair.add_veth()
    tc(pair, "qdisc", "add", "dev", "eth0", qdisc)
    hook = ["ingress"] if qdisc == "clsact" else ["parent", "ffff:"]
    tc(pair, "filter", "add", "dev", "eth0", *hook,
       "prio", "7", "protocol", "all", "u32", "match", "u32", "0", "0", "flowid", "1:1")
    before = snapshot(pair.pod_path)
    net = run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX)
    try:
        prios = sorted(f[2] for f in snapshot(pair.pod_path)["filters"] if f[0] == "eth0")
        assert 6 in prios and 7 in prios  # ours runs first
        assert [r[0] for r in redirects(pair.pod_path, "eth0")] == ["tap0_kata"]
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    assert snapshot(pair.pod_path) == before


def test_two_interfaces_and_an_unsupported_one(pair, tmp_path):
    pair.add_veth("eth0", "198.18.0.2/24", "198.18.0.1/24")
    pair.add_veth("net1", "198.18.1.2/24", "198.18.1.1/24")
    subprocess.run(["ip", "-n", pair.pod, "link", "add", "br9", "type", "bridge"], check=True)
    before = snapshot(pair.pod_path)
    net = run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX)
    try:
        assert [(ep.link.name, ep.device) for ep in net.plan.endpoints] == [
            ("eth0", "tap0_kata"), ("net1", "tap1_kata")]
        assert [(s.name, s.kind) for s in net.plan.skipped] == [("br9", "bridge")]
        assert [nic.id for nic in net.nics] == ["net0", "net1"]
        assert [i.name for i in net.guest.renames] == ["pkrn0", "pkrn1"]
        assert [[a.address for a in i.IPAddresses] for i in net.guest.interfaces] == [
            ["198.18.0.2"], ["198.18.1.2"]]
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    assert snapshot(pair.pod_path) == before


def test_a_half_done_setup_is_undone_from_the_journal(pair, tmp_path):
    pair.add_veth()
    before = snapshot(pair.pod_path)
    with open_netns(pair.pod_path) as ipr:
        scanned = scan(ipr, pair.pod_path)
        plan = build_plan(scanned, "tcfilter", marker=marker(SANDBOX))
        # a second endpoint whose lower device does not exist: fails after the first is made
        bogus = Endpoint(Link(9999, "gone0", "veth", "02:00:00:00:00:09", 1400), "macvtap",
                         "tap7_kata", "net1")
        plan = type(plan)(plan.netns, plan.model, plan.marker, (*plan.endpoints, bogus))
        journal = Journal.create(tmp_path, pair.pod_path, plan.marker, plan.model)
        with pytest.raises(NetworkSetupError, match="gone0"):
            close_fds([fd for fds in apply_plan(ipr, plan, journal).values() for fd in fds])
    assert "tap0_kata" in links(pair.pod_path)
    entries = Journal.load(tmp_path).entries
    assert entries[-1] == {"op": "link", "name": "tap7_kata", "kind": "macvtap",
                           "lower": "gone0", "done": False}
    lines = teardown_state(tmp_path)
    assert "deleted tun tap0_kata" in lines
    assert snapshot(pair.pod_path) == before


def test_a_device_that_is_not_ours_is_left_alone(pair, tmp_path):
    pair.add_veth()
    subprocess.run(["ip", "-n", pair.pod, "tuntap", "add", "tap0_kata", "mode", "tap"],
                   check=True)
    subprocess.run(["ip", "-n", pair.pod, "link", "set", "tap0_kata", "alias", "someone-else"],
                   check=True)
    before = snapshot(pair.pod_path)
    net = run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                    sandbox_id=SANDBOX)
    try:
        # the taken name is skipped (and the foreign tap is not an interface to carry)
        assert [ep.device for ep in net.plan.endpoints] == ["tap1_kata"]
        assert [s.name for s in net.plan.skipped] == ["tap0_kata"]
    finally:
        net.release_fds()
        teardown_state(tmp_path)
    journal = Journal.create(tmp_path, pair.pod_path, marker(SANDBOX), "tcfilter")
    journal.add(op="link", name="tap0_kata", kind="tun", ifindex=None)
    assert teardown_state(tmp_path) == ["left tap0_kata alone: not ours (tun, 'someone-else')"]
    assert snapshot(pair.pod_path) == before


def test_teardown_when_the_netns_is_gone(tmp_path):
    with NetnsPair() as pair:
        pair.add_veth()
        run_setup(model="tcfilter", netns=pair.pod_path, state_dir=tmp_path,
                  sandbox_id=SANDBOX)
        path = pair.pod_path
    assert teardown_state(tmp_path) == [f"{path} is gone: nothing to undo"]
    assert not (tmp_path / STATE_FILE).exists()


def test_no_netns_and_model_none_add_nothing(pair, tmp_path):
    pair.add_veth()
    before = snapshot(pair.pod_path)
    for netns, model in ((None, "tcfilter"), (pair.pod_path, "none")):
        net = run_setup(model=model, netns=netns, state_dir=tmp_path, sandbox_id=SANDBOX)
        assert net.nics == [] and net.guest.empty and net.plan.notes
        assert not (tmp_path / STATE_FILE).exists()
    assert snapshot(pair.pod_path) == before
