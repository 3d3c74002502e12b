"""What a Kubernetes pod asks for as a whole reaches each of its containers in the VM,
through both of containerd's doors (a pause container, and 2.x's `sandboxer = "shim"`):
its size (a pod limited to 2 CPUs and 1 GiB got a 1-vCPU, 470 MiB VM), its namespaced
sysctls (net, and IPC: kernel.shm_rmid_forced was 0 in the containers), its volumes as
one filesystem (a unix socket in an emptyDir was refused from the other container) and,
without a DNS config, the host's resolver; its ports, as containerd's port-forward dials
them (localhost in the pod's netns on the host, where nothing listened); and a pod whose
sandbox cannot be created leaves no shim daemon behind."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from integration.cri_env import CriClient, CriNode, busybox_container, pod_sandbox_config
from integration.pykata_env import ensure_guest_assets, ensure_shim_on_path, leftovers
from integration.test_cri import CALL_TIMEOUT, assert_pod_gone, exec_sync
from integration.unixsock.build import build_unixsock
from shim.netns.nsenter import in_netns

SYSCTLS = {"kernel.shm_rmid_forced": "1", "net.ipv4.ip_local_port_range": "40000 50000"}
DOORS = [("1.7", ""), ("2", ""), ("2", "shim")]
# container "two" serves a page on the guest's loopback (8080) and on every address (8081)
PAGE = "served-in-the-vm"
SERVE = (f"mkdir -p /tmp/www && echo {PAGE} > /tmp/www/index.html && "
         "httpd -p 127.0.0.1:8080 -h /tmp/www && exec httpd -f -p 8081 -h /tmp/www")


def http_get_in_netns(netns: str, port: int) -> str:
    """What containerd's PortForward does: dial localhost:PORT inside the pod's netns
    (on the host); here with an HTTP GET over it."""
    result: list[object] = []

    def body() -> None:
        try:
            with in_netns(netns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(30)
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            result.append(answer.decode(errors="replace"))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(result[0], OSError):
        raise result[0]
    return str(result[0])


def assert_ports_forwarded(node: CriNode) -> None:
    """Both servers answer through the pod netns' loopback; a port nothing listens on in
    the guest is refused there."""
    netns_files = node.pod_netns_files()
    assert len(netns_files) == 1, netns_files
    deadline = time.monotonic() + 60
    for port in (8080, 8081):
        while True:
            try:
                answer = http_get_in_netns(netns_files[0], port)
                break
            except ConnectionRefusedError:  # the mirror follows the guest within seconds
                assert time.monotonic() < deadline, f"nothing listens on port {port}"
                time.sleep(1)
        assert answer.startswith("HTTP/1.") and PAGE in answer, answer
    try:
        http_get_in_netns(netns_files[0], 8082)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("port 8082 answered: nothing listens on it in the guest")


def pod_limits(api):
    """kubelet's pod totals (PodSandboxConfig.linux.resources): 2 CPUs, 1 GiB."""
    return api.LinuxContainerResources(cpu_period=100000, cpu_quota=200000,
                                       memory_limit_in_bytes=1 << 30)


@pytest.fixture(autouse=True)
def assets():
    ensure_shim_on_path()
    ensure_guest_assets()
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.fail("CNI plugins missing: apt-get install containernetworking-plugins")


@pytest.mark.parametrize(("line", "sandboxer"), DOORS,
                         ids=[f"containerd-{line}-{door or 'pause'}" for line, door in DOORS])
def test_the_pods_size_sysctls_resolver_and_ports_reach_every_container(line, sandboxer):
    with open("/etc/resolv.conf") as f:
        host_resolv = f.read()
    with CriNode(line=line, sandboxer=sandboxer) as node, CriClient(node.address) as cri:
        api = cri.api
        # kubelet's emptyDir layout; the socket tool rides in it (busybox has none)
        empty_dir = node.dir / "pods" / node.tag / "volumes" / "kubernetes.io~empty-dir" / "x"
        empty_dir.mkdir(parents=True)
        shutil.copy2(build_unixsock(), empty_dir / "unixsock")
        pod_config = pod_sandbox_config(  # no dns_config: the host's resolver
            api, node, "settings",
            hostname="settings-pod",
            linux=api.LinuxPodSandboxConfig(sysctls=SYSCTLS, resources=pod_limits(api)),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            ids = [
                cri.start_container(pod_id, pod_config, busybox_container(api, name,
                    command=(["/data/unixsock", "serve", "/data/sock"] if name == "one"
                             else ["sh", "-c", SERVE]),
                    mounts=[api.Mount(container_path="/data", host_path=str(empty_dir))],
                ))
                for name in ("one", "two")
            ]
            # one filesystem in the guest: the socket "one" bound answers "two"
            deadline = time.monotonic() + 60
            while True:
                code, out, err = exec_sync(cri, ids[1], "/data/unixsock", "dial", "/data/sock")
                if code == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert (code, out) == (0, "hello over /data/sock\n"), err
            devices = {exec_sync(cri, cid, "stat", "-c", "%d", "/data")[1] for cid in ids}
            assert len(devices) == 1, devices
            for cid in ids:
                code, out, err = exec_sync(
                    cri, cid, "cat", "/proc/sys/kernel/shm_rmid_forced",
                    "/proc/sys/net/ipv4/ip_local_port_range")
                assert code == 0, err
                assert out.split() == ["1", "40000", "50000"], (cid, out)
                code, out, err = exec_sync(cri, cid, "cat", "/etc/resolv.conf")
                assert (code, out) == (0, host_resolv), err
                code, out, err = exec_sync(cri, cid, "sh", "-c",
                                           "nproc; grep MemTotal /proc/meminfo")
                assert code == 0, err
                cpus, memory = out.splitlines()
                assert int(cpus) >= 2, out  # the defaults (1 vCPU) + the pod's 2, within
                assert int(memory.split()[1]) >= 1 << 20, out  # the host's CPUs; 512 + 1024
            assert_ports_forwarded(node)
        finally:
            cri.remove_pod(pod_id)
        assert_pod_gone(node, pod_id)


def test_a_sandbox_that_cannot_be_created_leaves_no_shim_behind():
    """containerd 2.x, `sandboxer = "shim"`: CreateSandbox fails (the configuration file
    is missing); the ShutdownSandbox that follows must end the shim's daemon."""
    options = {"ConfigPath": "/nonexistent/pykata/configuration.toml"}
    with CriNode(line="2", sandboxer="shim", runtime_options=options) as node, \
            CriClient(node.address) as cri:
        api = cri.api
        pod_config = pod_sandbox_config(api, node, "broken")
        with pytest.raises(Exception) as caught:
            cri.runtime.RunPodSandbox(
                api.RunPodSandboxRequest(config=pod_config, runtime_handler="pykata"),
                timeout=CALL_TIMEOUT)
        assert "/nonexistent/pykata/configuration.toml" in str(caught.value)
        deadline = time.monotonic() + 30
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not leftovers(), f"a failed RunPodSandbox left: {leftovers()}"


@pytest.mark.parametrize("sandboxer", ["", "shim"], ids=["pause", "shim"])
def test_raising_a_containers_limits_grows_the_running_vm(sandboxer):
    """UpdateContainerResources (in-place pod resize): +1 CPU and +512 MiB for a running
    container hot-plug a vCPU and a DIMM before its cgroup is raised; the guest's online
    CPUs and MemTotal follow. Past default_maxvcpus (0: the host's CPUs) it is refused,
    the VM as it was."""
    host_cpus = len(os.sched_getaffinity(0))
    with CriNode(line="2", sandboxer=sandboxer) as node, CriClient(node.address) as cri:
        api = cri.api

        def limits(cpus: int, memory_mib: int):
            return api.LinuxContainerResources(cpu_period=100000, cpu_quota=cpus * 100000,
                                               memory_limit_in_bytes=memory_mib << 20)

        pod_config = pod_sandbox_config(api, node, "resize",
            linux=api.LinuxPodSandboxConfig(resources=limits(0, 256)),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            cid = cri.start_container(pod_id, pod_config, busybox_container(api, "app",
                linux=api.LinuxContainerConfig(resources=limits(0, 256)),
            ))

            def guest() -> tuple[int, int]:
                code, out, err = exec_sync(cri, cid, "sh", "-c",
                                           "nproc; grep MemTotal /proc/meminfo")
                assert code == 0, err
                cpus, memory = out.splitlines()
                return int(cpus), int(memory.split()[1]) >> 10

            cpus, memory = guest()
            assert cpus == 1  # the default vCPU; the pod has no CPU limit yet
            cri.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
                container_id=cid, linux=limits(1, 768)), timeout=CALL_TIMEOUT)
            grown_cpus, grown_memory = guest()
            assert grown_cpus == cpus + 1, (cpus, grown_cpus)
            assert grown_memory >= memory + 500, (memory, grown_memory)
            with pytest.raises(Exception, match="default_maxvcpus"):
                cri.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
                    container_id=cid, linux=limits(host_cpus, 768)), timeout=CALL_TIMEOUT)
            assert guest() == (grown_cpus, grown_memory)
        finally:
            cri.remove_pod(pod_id)
        assert_pod_gone(node, pod_id)


def test_a_memory_emptydir_is_one_tmpfs_in_the_guest_for_the_whole_pod(tmp_path):
    """kubelet mounts a tmpfs on the host for an emptyDir of `medium: Memory`; the pod's
    containers get one tmpfs in the guest instead (the host's stays untouched)."""
    from shim.sandbox.mounts import mount, unmount_all_under

    with CriNode(line="2") as node, CriClient(node.address) as cri:
        api = cri.api
        memory = node.dir / "pods" / node.tag / "volumes" / "kubernetes.io~empty-dir" / "mem"
        memory.mkdir(parents=True)
        mount("tmpfs", str(memory), "tmpfs", 0, "size=32m")
        try:
            pod_config = pod_sandbox_config(api, node, "memvol")
            pod_id = cri.run_pod(pod_config)
            try:
                ids = [cri.start_container(pod_id, pod_config, busybox_container(api, name,
                    mounts=[api.Mount(container_path="/cache", host_path=str(memory))],
                )) for name in ("one", "two")]
                code, out, err = exec_sync(cri, ids[0], "sh", "-c",
                                           "echo kept > /cache/x; stat -f -c %T /cache; "
                                           "df -k /cache | tail -1")
                assert code == 0, err
                fstype, usage = out.splitlines()
                assert fstype == "tmpfs" and usage.split()[1] == str(32 * 1024), out
                assert exec_sync(cri, ids[1], "cat", "/cache/x")[1] == "kept\n"
                assert list(memory.iterdir()) == []  # in the guest's memory, not the host's
            finally:
                cri.remove_pod(pod_id)
            assert_pod_gone(node, pod_id)
        finally:
            unmount_all_under(str(memory))
