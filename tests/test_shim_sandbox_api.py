"""containerd 2.x's Sandbox API on the shim's socket, over ttrpc, before any VM is involved."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.any_pb2 import Any

import ttrpc
from protos.containerd.runtime.sandbox.v1 import sandbox_pb2 as sapi
from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions
from protos.containerd.task.v2 import shim_pb2 as tapi
from protos.kubernetes import cri_pod_pb2
from shim.config import parse_config
from shim.guest_agent import GuestAgent
from shim.pod import cri
from shim.pod.cri import dns_lines, pod_config
from shim.pod.pod import Pod
from shim.sandbox.sandbox import Sandbox
from shim.task_service import sandbox_service
from shim.task_service.events import EventPublisher
from shim.task_service.sandbox_service import SandboxService
from shim.task_service.service import TaskService

SANDBOX = sapi.DESCRIPTOR.services_by_name["Sandbox"]
TASK = tapi.DESCRIPTOR.services_by_name["Task"]
Code = ttrpc.Code


def _pod_options(**fields) -> Any:
    return Any(type_url="runtime.v1.PodSandboxConfig",
               value=cri_pod_pb2.PodSandboxConfig(**fields).SerializeToString())


@pytest.fixture
async def services(tmp_path, monkeypatch):
    shutdown = asyncio.Event()
    doors = []
    pod = Pod("pykata-test", lambda event: [door.on_pod_event(event) for door in doors])
    tasks = TaskService(pod, EventPublisher("", "pykata-test"), shutdown)
    doors += [tasks, SandboxService(pod, shutdown)]
    server = ttrpc.Server()
    server.register(TASK, tasks)
    server.register(SANDBOX, doors[1])
    await server.serve_unix(str(tmp_path / "s.sock"))
    client = await ttrpc.Client.connect(str(tmp_path / "s.sock"))
    yield ttrpc.Stub(client, SANDBOX), ttrpc.Stub(client, TASK), tasks, shutdown
    await client.close()
    await server.shutdown()


async def code_of(call) -> tuple[Code, str]:
    with pytest.raises(ttrpc.TTRPCError) as caught:
        await call
    return caught.value.code, caught.value.message


@pytest.mark.parametrize("method", ["StartSandbox", "Platform", "StopSandbox", "WaitSandbox",
                                    "SandboxStatus", "PingSandbox", "ShutdownSandbox",
                                    "SandboxMetrics"])
async def test_an_unknown_sandbox_is_not_found(services, method):
    stub = services[0]
    request = SANDBOX.methods_by_name[method].input_type._concrete_class(sandbox_id="nope")
    code, message = await code_of(getattr(stub, method)(request))
    assert (code, message) == (Code.NOT_FOUND, "sandbox nope not found")


@pytest.mark.parametrize("bad", ["../x", "a/b", "x" * 300, "a\0b"])
async def test_a_sandbox_id_with_path_characters_is_refused(services, bad):
    code, message = await code_of(services[0].CreateSandbox(
        sapi.CreateSandboxRequest(sandbox_id=bad)))
    assert code == Code.INVALID_ARGUMENT and "sandbox id" in message


async def test_options_of_another_type_are_refused(services):
    code, message = await code_of(services[0].CreateSandbox(sapi.CreateSandboxRequest(
        sandbox_id="pod1", options=Any(type_url="runc.v1.Options", value=b"\x08\x01"))))
    assert code == Code.INVALID_ARGUMENT
    assert "expected runtime.v1.PodSandboxConfig" in message


async def test_a_created_pod_answers_status_platform_and_one_create_only(services):
    stub, _, tasks, _ = services
    await stub.CreateSandbox(sapi.CreateSandboxRequest(
        sandbox_id="pod1", netns_path="/var/run/netns/cni-x",
        options=_pod_options(hostname="h1")))
    assert tasks.pod.owned_by_sandbox_api
    status = await stub.SandboxStatus(sapi.SandboxStatusRequest(sandbox_id="pod1"))
    assert (status.sandbox_id, status.state, status.pid) == ("pod1", "SANDBOX_NOTREADY", 0)
    answer = await stub.Platform(sapi.PlatformRequest(sandbox_id="pod1"))
    assert answer.platform.os == "linux" and answer.platform.architecture in ("amd64", "arm64")
    code, _ = await code_of(stub.CreateSandbox(sapi.CreateSandboxRequest(sandbox_id="pod2")))
    assert code == Code.ALREADY_EXISTS
    code, message = await code_of(stub.PingSandbox(sapi.PingRequest(sandbox_id="pod1")))
    assert code == Code.UNAVAILABLE and "not running" in message
    code, message = await code_of(stub.SandboxMetrics(
        sapi.SandboxMetricsRequest(sandbox_id="pod1")))
    assert code == Code.UNIMPLEMENTED and "Task.Stats" in message


async def test_wait_returns_after_stop_and_only_shutdown_sandbox_ends_the_shim(services):
    stub, task, _, shutdown = services
    await stub.CreateSandbox(sapi.CreateSandboxRequest(sandbox_id="pod1"))
    waiting = asyncio.ensure_future(stub.WaitSandbox(sapi.WaitSandboxRequest(sandbox_id="pod1")))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await stub.StopSandbox(sapi.StopSandboxRequest(sandbox_id="pod1"))
    answer = await asyncio.wait_for(waiting, 5)
    assert answer.exit_status == 0 and answer.exited_at.seconds > 0
    # containerd 2.1.2+ sends Task.Shutdown after each container's Delete: not the end
    await task.Shutdown(tapi.ShutdownRequest(id="some-container"))
    assert not shutdown.is_set()
    code, message = await code_of(stub.StartSandbox(sapi.StartSandboxRequest(sandbox_id="pod1")))
    assert code == Code.FAILED_PRECONDITION and "stopped" in message
    await stub.ShutdownSandbox(sapi.ShutdownSandboxRequest(sandbox_id="pod1"))
    await asyncio.wait_for(shutdown.wait(), 2)  # right after the answer went out


def test_pod_config_gives_the_agent_hostname_and_resolv_conf():
    config = pod_config(_pod_options(
        hostname="h1", dns_config=cri_pod_pb2.DNSConfig(
            servers=["198.18.0.53"], searches=["a.test", "b.test"], options=["ndots:5"])))
    assert config.hostname == "h1"
    assert dns_lines(config) == ["nameserver 198.18.0.53", "search a.test b.test",
                                 "options ndots:5"]
    assert dns_lines(pod_config(None)) == []


def test_start_options_reach_the_daemon_through_its_environment(monkeypatch):
    body = b'[hypervisor.qemu]\ndefault_memory = 256\n'
    wrapped = Any(type_url="runtimeoptions.v1.Options",
                  value=runtimeoptions.Options(config_body=body).SerializeToString())
    monkeypatch.setenv(sandbox_service.OPTIONS_ENV, wrapped.SerializeToString().hex())
    assert sandbox_service.start_options() == ("", body)
    assert sandbox_service.OPTIONS_ENV not in os.environ
    monkeypatch.setenv(sandbox_service.OPTIONS_ENV, "not hex")
    assert sandbox_service.start_options() == ("", b"")


def test_pod_files_give_containers_a_hostname_hosts_and_resolver(tmp_path):
    made = cri.write_pod_files(tmp_path / "pod", "h1", ["nameserver 198.18.0.53"])
    assert sorted(made) == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert Path(made["/etc/hostname"]).read_text() == "h1\n"
    assert "127.0.1.1\th1" in Path(made["/etc/hosts"]).read_text()
    assert Path(made["/etc/resolv.conf"]).read_text() == "nameserver 198.18.0.53\n"
    bare = cri.write_pod_files(tmp_path / "bare", "", [], host_resolv=str(tmp_path / "none"))
    assert sorted(bare) == ["/etc/hosts"]


def test_a_pod_without_dns_config_gets_the_hosts_resolver(tmp_path):
    """As containerd gives a pause-container pod: a copy of the host's resolv.conf."""
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 198.18.0.1\nsearch node.test\n")
    made = cri.write_pod_files(tmp_path / "pod", "h1", [], host_resolv=str(host))
    assert Path(made["/etc/resolv.conf"]).read_text() == host.read_text()


async def test_a_create_sandbox_that_failed_lets_shutdown_end_the_daemon(services, tmp_path):
    """containerd calls ShutdownSandbox after a failed CreateSandbox: the daemon must end,
    or it is left behind forever."""
    stub, _, _, shutdown = services
    missing = Any(type_url="runtime.v1.PodSandboxConfig", value=b"\xff\xff")
    code, _ = await code_of(stub.CreateSandbox(
        sapi.CreateSandboxRequest(sandbox_id="pod1", options=missing)))
    assert code == Code.INVALID_ARGUMENT
    code, _ = await code_of(stub.ShutdownSandbox(sapi.ShutdownSandboxRequest(sandbox_id="pod2")))
    assert code == Code.NOT_FOUND and not shutdown.is_set()  # another's: not ours to end
    await stub.ShutdownSandbox(sapi.ShutdownSandboxRequest(sandbox_id="pod1"))
    assert shutdown.is_set()


def test_the_pods_sysctls_and_files_are_given_to_each_container(tmp_path):
    request = sapi.CreateSandboxRequest(sandbox_id="pod1", options=_pod_options(
        hostname="h1", linux=cri_pod_pb2.LinuxPodSandboxConfig(
            sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_local_port_range": "1 2"})))
    asked = cri.cri_pod(request, "ns", parse_config(""))
    gifts = asked.gifts(tmp_path / "pod")
    assert gifts.sysctls == {"kernel.shm_rmid_forced": "1",
                             "net.ipv4.ip_local_port_range": "1 2"}
    assert "/etc/hostname" in gifts.files
    assert asked.settings.hostname == "h1" and asked.settings.sandbox_id == "pod1"


@pytest.mark.parametrize(("pid", "shared"), [
    (cri_pod_pb2.POD, True), (cri_pod_pb2.NODE, True), (cri_pod_pb2.CONTAINER, False)])
def test_a_pod_shares_a_pid_namespace_unless_each_container_has_its_own(pid, shared):
    options = _pod_options(linux=cri_pod_pb2.LinuxPodSandboxConfig(
        security_context=cri_pod_pb2.LinuxSandboxSecurityContext(
            namespace_options=cri_pod_pb2.NamespaceOption(pid=pid))))
    assert cri.shares_pid_namespace(options, pod_config(options)) is shared


def test_without_a_cri_config_the_agent_makes_no_pod_pid_namespace():
    assert not cri.shares_pid_namespace(Any(), pod_config(Any()))
    assert not cri.shares_pid_namespace(None, pod_config(None))
    empty = _pod_options()  # CRI's defaults: pid POD
    assert cri.shares_pid_namespace(empty, pod_config(empty))


@pytest.mark.parametrize(("pid", "shared"), [
    (cri_pod_pb2.POD, True), (cri_pod_pb2.CONTAINER, False)])
async def test_start_sandbox_asks_the_agent_for_the_pod_pid_namespace(
        services, tmp_path, pid, shared):
    """No pause container comes through this door: the agent must make the pod's pid
    namespace itself (CreateSandboxRequest.sandbox_pidns), never leave the containers in
    the guest's own."""
    stub, _, tasks, _ = services
    booted = {}

    async def boot(settings):
        booted.update(vars(settings))
        tasks.pod.sandbox = SimpleNamespace(id=settings.sandbox_id, pid=4242, state_dir=tmp_path)
        return tasks.pod.sandbox

    tasks.pod.boot = boot
    await stub.CreateSandbox(sapi.CreateSandboxRequest(
        sandbox_id="pod1", options=_pod_options(linux=cri_pod_pb2.LinuxPodSandboxConfig(
            security_context=cri_pod_pb2.LinuxSandboxSecurityContext(
                namespace_options=cri_pod_pb2.NamespaceOption(pid=pid))))))
    answer = await stub.StartSandbox(sapi.StartSandboxRequest(sandbox_id="pod1"))
    assert answer.pid == 4242
    assert booted["sandbox_pidns"] is shared


@pytest.mark.parametrize("shared", [True, False])
async def test_the_agents_create_sandbox_carries_sandbox_pidns(shared):
    sent = []

    class Transport:
        async def request(self, method, message, answer, timeout):
            assert method == "CreateSandbox"
            sent.append(message)

    sandbox = Sandbox("pykata-test", "pod1", parse_config(""))
    sandbox.agent = GuestAgent(Transport())
    await sandbox._create_agent_sandbox("h1", ["nameserver 198.18.0.53"], shared)
    assert [(r.sandbox_id, r.hostname, r.sandbox_pidns) for r in sent] == [("pod1", "h1", shared)]
