"""What an operator reaches for, against a pod running in a VM: the shim's monitor socket
and `pykata-runtime` metrics, exec, iptables, direct-volume, overhead and monitor."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from integration.containerd_env import _pids_with_arg
from integration.pykata_env import (
    RUNTIME,
    STATE_ROOT,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from shim.monitor.parse import parse

pytestmark = pytest.mark.integration
DEBUG_CONSOLE = "[agent.kata]\ndebug_console_enabled = true\n"


def runtime(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`pykata-runtime ARGS` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "shim.admin", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def test_overhead_boots_an_idle_pod_of_its_own_and_removes_it():
    ensure_shim_on_path()
    ensure_guest_assets()
    got = runtime("overhead", "--seconds", "2", "--settle", "2", timeout=300)
    assert got.returncode == 0, got.stderr
    assert "idle pod booted for this" in got.stdout
    measured = re.search(r"= ([0-9.]+) MiB", got.stdout)
    memory = re.search(r'memory: "(\d+)Mi"', got.stdout)
    assert measured and memory, got.stdout
    assert int(memory.group(1)) >= float(measured.group(1)) > 50
    assert not (STATE_ROOT / "pykata-overhead").exists()
    assert not _pids_with_arg(str(STATE_ROOT / "pykata-overhead"))


@pytest.fixture(scope="module")
def pod(containerd, busybox_image, tmp_path_factory):
    """A pod with the debug console on and a direct volume bound at /data."""
    ensure_shim_on_path()
    ensure_guest_assets()
    cd = containerd
    work = tmp_path_factory.mktemp("operator")
    volume = work / "volume"
    volume.mkdir()
    config = work / "configuration.toml"
    config.write_text(DEBUG_CONSOLE)
    cid = f"op-{uuid.uuid4().hex[:8]}"
    added = runtime("direct-volume", "add", "--volume-path", str(volume), "--mount-info",
                    json.dumps({"volume-type": "directory", "device": str(volume),
                                "fstype": "virtiofs"}))
    assert added.returncode == 0, added.stderr
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, "--runtime-config-path", str(config),
                    "--mount", f"type=bind,src={volume},dst=/data,options=rbind:rw",
                    busybox_image, cid, "sleep", "600", timeout=300)
    assert result.returncode == 0, result.stderr
    yield cd, cid, volume
    cd.ctr("task", "kill", "-s", "KILL", cid)
    cd.ctr("task", "rm", "-f", cid, timeout=60)
    cd.ctr("container", "rm", cid)
    runtime("direct-volume", "remove", "--volume-path", str(volume))
    assert_nothing_left()


def monitor_socket(cd, cid: str) -> Path:
    return STATE_ROOT / cd.namespace / cid / "shim-monitor.sock"


def families_of(text: str) -> dict[str, object]:
    return {family.name: family for family in parse(text, strict=True)}


def test_the_monitor_socket_serves_host_shim_agent_and_guest_metrics(pod):
    cd, cid, _ = pod
    got = subprocess.run(["curl", "-sf", "--unix-socket", str(monitor_socket(cd, cid)),
                          "http://x/metrics"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    families = families_of(got.stdout)
    for name in ("kata_hypervisor_proc_status", "kata_shim_rpc_durations_histogram_milliseconds",
                 "kata_guest_meminfo", "kata_virtiofsd_proc_status",
                 "kata_shim_pod_overhead_memory_in_bytes"):
        assert name in families, sorted(families)
    assert any(name.startswith("kata_agent_") for name in families), sorted(families)
    assert f'sandbox_id="{cid}"' in got.stdout
    agent_url = subprocess.run(["curl", "-sf", "--unix-socket", str(monitor_socket(cd, cid)),
                                "http://x/agent-url"], capture_output=True, text=True, timeout=30)
    assert agent_url.stdout.startswith(("unix://", "vsock://", "hvsock://")), agent_url.stdout


def test_runtime_metrics_prints_the_same_families(pod):
    _cd, cid, _ = pod
    got = runtime("metrics", cid)
    assert got.returncode == 0, got.stderr
    assert "kata_guest_meminfo" in families_of(got.stdout)


def test_exec_runs_a_command_in_the_guest_over_the_debug_console(pod):
    cd, cid, _ = pod
    kernel = cd.ctr("task", "exec", "--exec-id", "k", cid, "uname", "-r", timeout=60)
    got = runtime("exec", cid, "uname", "-r")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == kernel.stdout.strip() != ""
    failed = runtime("exec", cid, "sh", "-c", "exit 7")
    assert failed.returncode == 7, failed.stderr


def test_exec_without_the_console_says_how_to_enable_it(containerd, busybox_image):
    cd = containerd
    cid = f"op-noconsole-{uuid.uuid4().hex[:6]}"
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, cid, "sleep", "600",
                    timeout=300)
    assert result.returncode == 0, result.stderr
    try:
        got = runtime("exec", cid, "uname", "-r")
        assert got.returncode != 0
        assert "debug_console_enabled = true" in got.stderr, got.stderr
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        cd.ctr("task", "rm", "-f", cid, timeout=60)
        cd.ctr("container", "rm", cid)


def test_iptables_set_then_get_round_trips_a_rule_in_the_guest(pod, tmp_path):
    _cd, cid, _ = pod
    rules = tmp_path / "rules"
    rules.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 198.18.9.9/32 -j DROP\nCOMMIT\n")
    assert runtime("iptables", "set", cid, str(rules)).returncode == 0
    got = runtime("iptables", "get", cid)
    assert got.returncode == 0, got.stderr
    assert re.search(r"-A INPUT -s 198\.18\.9\.9(/32)? -j DROP", got.stdout), got.stdout


def test_direct_volume_stats_report_the_volumes_usage(pod):
    cd, cid, volume = pod
    cd.ctr("task", "exec", "--exec-id", "fill", cid, "dd", "if=/dev/zero", "of=/data/blob",
           "bs=1M", "count=4", timeout=60)
    got = runtime("direct-volume", "stats", "--volume-path", str(volume))
    assert got.returncode == 0, got.stderr
    stats = json.loads(got.stdout)
    print(stats)
    assert stats, got.stdout


def test_overhead_gives_a_runtime_class_at_least_the_measured_pss(pod):
    _, cid, _ = pod
    got = runtime("overhead", "--sandbox", cid, "--seconds", "2", timeout=120)
    assert got.returncode == 0, got.stderr
    measured = re.search(r"= ([0-9.]+) MiB", got.stdout)
    memory = re.search(r'memory: "(\d+)Mi"', got.stdout)
    assert measured and memory, got.stdout
    assert float(measured.group(1)) > 50, "QEMU alone takes more than that"
    assert int(memory.group(1)) >= float(measured.group(1))
    assert "kind: RuntimeClass" in got.stdout and "handler: pykata" in got.stdout


def test_the_node_monitor_aggregates_the_pods_metrics(pod):
    _, cid, _ = pod
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "shim.admin", "monitor", "--listen",
                               f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        for _ in range(100):
            got = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"],
                                 capture_output=True, text=True, timeout=30)
            if got.returncode == 0:
                text = got.stdout
                break
            time.sleep(0.2)
        assert f'sandbox_id="{cid}"' in text
        assert "kata_monitor_running_shim_count" in families_of(text)
    finally:
        server.terminate()
        server.communicate(timeout=10)
