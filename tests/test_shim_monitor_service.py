"""The pod's monitor socket (shim.task_service.monitor_service) over a real Unix socket,
with the guest agent replaced by a scripted stand-in (the real one is covered by
integration/test_monitor.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import ttrpc
from shim.guest_agent import GuestAgent
from shim.monitor.parse import parse
from shim.monitor.rpc_metrics import RpcMetrics
from shim.paths import MONITOR_SOCKET
from shim.pod.container import Container
from shim.pod.pod import Pod
from shim.pod.process import Process, Stdio
from shim.task_service.monitor_service import SandboxMonitor

GUEST_PAGE = "# TYPE kata_guest_load gauge\nkata_guest_load{item=\"load1\"} 0.5\n"


class Agent:
    """The transport of the pod's GuestAgent: answers by method name."""

    address = "unix:///x/agent.sock"

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []

    async def request(self, method, message, answer, timeout):
        return await getattr(self, method)(message, timeout=timeout)

    async def GetMetrics(self, request, timeout=None):
        return SimpleNamespace(metrics=GUEST_PAGE)

    async def StatsContainer(self, request, timeout=None):
        usage = SimpleNamespace(total_usage=5_000_000)
        memory = SimpleNamespace(usage=SimpleNamespace(usage=1 << 20))
        return SimpleNamespace(cgroup_stats=SimpleNamespace(
            cpu_stats=SimpleNamespace(cpu_usage=usage), memory_stats=memory))

    async def GetIPTables(self, request, timeout=None):
        self.requests.append(("get", request.is_ipv6))
        return SimpleNamespace(data=b"*filter\nCOMMIT\n")

    async def SetIPTables(self, request, timeout=None):
        self.requests.append(("set", request.is_ipv6, request.data))
        raise ttrpc.TTRPCError(ttrpc.Code.INVALID_ARGUMENT, "iptables-restore: line 1 failed")

    async def GetVolumeStats(self, request, timeout=None):
        from protos.kata import agent_pb2

        self.requests.append(("stats", request.volume_guest_path))
        return agent_pb2.VolumeStatsResponse(
            usage=[agent_pb2.VolumeUsage(available=1, total=3, used=2)])


@pytest.fixture
async def monitor(tmp_path):
    state_dir = tmp_path / "pod1"
    state_dir.mkdir()
    pod = Pod("ns1", lambda event: None)
    agent = Agent()
    vm = SimpleNamespace(pid=os.getpid(), virtiofsd=None)
    pod.sandbox = SimpleNamespace(id="pod1", vm=vm, agent=GuestAgent(agent), state_dir=state_dir)
    spec = {"annotations": {"io.kubernetes.cri.sandbox-name": "web",
                            "io.kubernetes.cri.sandbox-namespace": "default",
                            "io.kubernetes.cri.sandbox-uid": "u-1"}}
    container = Container(id="c1", bundle="/b", spec=spec, init=Process("c1", "", 1, Stdio()))
    container.shared_sources[str(tmp_path)] = "/run/kata-containers/shared/containers/c1/m"
    pod.containers["c1"] = container
    rpc = RpcMetrics()
    rpc.observe_task("containerd.task.v2.Task", "Create", 0.25, ttrpc.Code.OK)
    service = SandboxMonitor(pod, rpc)
    await service.open(pod.sandbox)
    yield service, agent, state_dir / MONITOR_SOCKET, tmp_path
    await service.close()


async def http(socket_path: Path, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_agent_url_names_the_agents_address(monitor):
    _, _, sock, _ = monitor
    assert await http(sock, "GET", "/agent-url") == (200, b"unix:///x/agent.sock\n")


async def test_metrics_carry_host_guest_and_rpc_families_with_the_pods_labels(monitor):
    _, _, sock, _ = monitor
    status, body = await http(sock, "GET", "/metrics")
    assert status == 200
    families = {family.name: family for family in parse(body.decode(), strict=True)}
    for name in ("kata_shim_proc_status", "kata_hypervisor_proc_status", "kata_guest_load",
                 "kata_shim_rpc_durations_histogram_milliseconds",
                 "kata_shim_pod_overhead_memory_in_bytes"):
        assert name in families, sorted(families)
    assert 'sandbox_id="pod1"' in body.decode()
    assert 'cri_name="web"' in body.decode() and 'cri_uid="u-1"' in body.decode()
    assert 'action="create"' in body.decode()


async def test_iptables_get_and_a_refused_set_keep_the_agents_words(monitor):
    _, agent, sock, _ = monitor
    assert await http(sock, "GET", "/ip6tables") == (200, b"*filter\nCOMMIT\n")
    status, body = await http(sock, "PUT", "/iptables", b"*filter\nbogus\n")
    assert status == 400
    assert body == b"INVALID_ARGUMENT: iptables-restore: line 1 failed\n"
    assert agent.requests == [("get", True), ("set", False, b"*filter\nbogus\n")]


async def test_volume_stats_find_the_guest_path_of_a_shared_source(monitor):
    _, agent, sock, tmp_path = monitor
    status, body = await http(sock, "GET", f"/direct-volume/stats?path={tmp_path}")
    assert status == 200 and b'"used": "2"' in body
    assert agent.requests == [("stats", "/run/kata-containers/shared/containers/c1/m")]
    status, body = await http(sock, "GET", "/direct-volume/stats?path=/elsewhere")
    assert (status, body) == (404, b"no container of this pod mounts /elsewhere\n")
    status, body = await http(sock, "POST", "/direct-volume/resize", b"{not json")
    assert status == 400 and b"volumePath" in body


async def test_a_pod_without_its_vm_answers_503(monitor):
    service, _, sock, _ = monitor
    service.pod.sandbox.vm = None
    status, body = await http(sock, "GET", "/metrics")
    assert (status, body) == (503, b"UNAVAILABLE: the pod's VM is not running\n")
