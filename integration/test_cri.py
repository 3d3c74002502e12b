"""The Kubernetes path: containerd's CRI plugin runs a pod with runtime handler "pykata".

Driven as a kubelet drives it (CRI v1 over gRPC): RunPodSandbox (the pause container
boots the VM), two app containers that join that same VM, ExecSync, HTTP from the
node to the pod IP, then StopPodSandbox + RemovePodSandbox, after which nothing of
pykata and no pod netns is left. See integration/cri_env.py for the node.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from integration.containerd_env import BUSYBOX_IMAGE, _mounts_under, _pids_with_arg
from integration.containerd_versions import CONTAINERD_LINES
from integration.cri_env import CRI_NAMESPACE, CriClient, CriNode
from integration.pykata_env import STATE_ROOT, ensure_guest_assets, ensure_shim_on_path

pytestmark = pytest.mark.integration
HTTP_PORT = 8080
PAGE = "hello from a pykata pod"
HTTPD = (f"mkdir -p /www && echo '{PAGE}' > /www/index.html && "
         f"exec httpd -f -p {HTTP_PORT} -h /www")
CALL_TIMEOUT = 300
# the oom_score_adj of the process whose command line is exactly "sleep 600"
FIND_SLEEP = ("for d in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $d/cmdline)\" = 'sleep 600 ' ] "
              "&& cat $d/oom_score_adj; done")


@pytest.fixture(scope="module", params=CONTAINERD_LINES, ids=lambda line: f"containerd-{line}")
def node(request):
    ensure_shim_on_path()
    ensure_guest_assets()
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.fail("CNI plugins missing: apt-get install containernetworking-plugins")
    with CriNode(line=request.param) as made:
        yield made
    assert not os.path.exists(made.netns_path)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def qemu_pids(pod_id: str) -> list[int]:
    """QEMU processes of this pod (its state dir is in their argv; other tests may run
    VMs of their own at the same time)."""
    return [p for p in _pids_with_arg(f"{STATE_ROOT}/{CRI_NAMESPACE}/{pod_id}/")
            if _comm(p).startswith("qemu")]


def pod_leftovers(node: CriNode, pod_id: str) -> dict[str, list]:
    """What pykata may leave of this pod: processes, mounts, state, pod netns, taps."""
    sandbox = f"{STATE_ROOT}/{CRI_NAMESPACE}/{pod_id}"
    found = {
        "processes (qemu, virtiofsd)": _pids_with_arg(sandbox + "/"),
        "shims": [p for p in _pids_with_arg(node.address) if "pykata" in _cmdline(p)],
        "mounts": _mounts_under(Path(sandbox)),
        "state": [sandbox] if os.path.exists(sandbox) else [],
        "pod netns": node.pod_netns_files(),
        "taps": taps(node),
    }
    return {k: v for k, v in found.items() if v}


def assert_pod_gone(node: CriNode, pod_id: str, timeout: float = 30) -> None:
    """Wait up to `timeout` for the pod's leftovers to go (teardown is asynchronous), then
    fail naming what is still there."""
    deadline = time.monotonic() + timeout
    left = pod_leftovers(node, pod_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = pod_leftovers(node, pod_id)
    assert not left, f"pod left things behind: {left}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def taps(node: CriNode) -> list[str]:
    """tap devices visible from any pod netns CRI made."""
    found = []
    for path in node.pod_netns_files():
        out = subprocess.run(
            ["nsenter", f"--net={path}", "--", "ip", "-o", "link"],
            capture_output=True, text=True, timeout=10).stdout
        found += [line.split(":")[1].strip() for line in out.splitlines() if "_kata" in line]
    return found


def exec_sync(cri: CriClient, cid: str, *cmd: str) -> tuple[int, str, str]:
    answer = cri.runtime.ExecSync(
        cri.api.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=120),
        timeout=CALL_TIMEOUT)
    return answer.exit_code, answer.stdout.decode(), answer.stderr.decode()


def test_a_pod_with_two_containers_runs_in_one_vm(node):
    with CriClient(node.address) as cri:
        api = cri.api
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="web", namespace="default",
                                            uid=f"uid-{node.tag}", attempt=0),
            hostname="pykata-pod",
            log_directory=str(node.dir / "logs"),
            linux=api.LinuxPodSandboxConfig(),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            status = cri.runtime.PodSandboxStatus(
                api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30).status
            assert status.state == api.SANDBOX_READY
            pod_ip = status.network.ip
            assert pod_ip.startswith("198.18.4."), pod_ip
            assert len(qemu_pids(pod_id)) == 1
            # CRI's pod netns (under containerd's state dir) holds pykata's tap
            assert len(node.pod_netns_files()) == 1 and taps(node) == ["tap0_kata"]

            termination_log = node.dir / "termination-log"  # kubelet makes one per container
            termination_log.touch()
            ids = {}
            for name, script in (("hello", "echo $HOSTNAME; sleep 600"), ("web", HTTPD)):
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name=name, attempt=0),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE),
                    command=["sh", "-c", script],
                    log_path=f"{name}.log",
                    mounts=[api.Mount(container_path="/dev/termination-log",
                                      host_path=str(termination_log))] if name == "web" else [],
                    linux=api.LinuxContainerConfig(
                        # kubelet's BestEffort score for one, none (0) for the other
                        resources=api.LinuxContainerResources(
                            oom_score_adj=1000 if name == "web" else 0),
                        security_context=api.LinuxContainerSecurityContext(
                            namespace_options=api.NamespaceOption(
                                pid=api.POD if name == "hello" else api.CONTAINER))),
                )
                cid = cri.start_container(pod_id, pod_config, config)
                ids[name] = cid
            for cid in ids.values():
                state = cri.runtime.ContainerStatus(
                    api.ContainerStatusRequest(container_id=cid), timeout=30).status.state
                assert state == api.CONTAINER_RUNNING

            # one VM: one QEMU, and the same guest boot_id seen from both containers
            assert len(qemu_pids(pod_id)) == 1
            boot_ids = set()
            for cid in ids.values():
                code, out, err = exec_sync(cri, cid, "cat", "/proc/sys/kernel/random/boot_id")
                assert code == 0, err
                boot_ids.add(out.strip())
            assert len(boot_ids) == 1 and "" not in boot_ids, boot_ids
            assert _read(Path("/proc/sys/kernel/random/boot_id")).strip() not in boot_ids

            # CRI's bind mounts reach the guest: /etc/hosts, /etc/hostname, /dev/shm
            code, out, err = exec_sync(cri, ids["web"], "sh", "-c",
                                       "cat /etc/hostname; grep -c . /etc/hosts; "
                                       "echo x > /dev/shm/probe && cat /dev/shm/probe; hostname")
            assert code == 0, err
            assert out.split() == ["pykata-pod", out.split()[1], "x", "pykata-pod"], out
            # kubelet's termination-log bind mount: written in the guest, read on the host
            assert exec_sync(cri, ids["web"], "sh", "-c", "echo bye > /dev/termination-log")[0] == 0
            assert _read(termination_log) == "bye\n"
            # "hello" shares the pod's pid namespace (the pause process is in it); "web" not
            _, hello_ps, _ = exec_sync(cri, ids["hello"], "ps", "-o", "args")
            _, web_ps, _ = exec_sync(cri, ids["web"], "ps", "-o", "args")
            assert "trap" in hello_ps and "sleep 600" in hello_ps, hello_ps
            assert "trap" not in web_ps and "httpd" in web_ps, web_ps

            # ExecSync: output and exit code
            assert exec_sync(cri, ids["hello"], "sh", "-c", "echo out; echo err >&2; exit 3") \
                == (3, "out\n", "err\n")

            # the first container's output reached its CRI log file
            log_file = node.dir / "logs" / "hello.log"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "pykata-pod" not in _read(log_file):
                time.sleep(0.5)
            assert "pykata-pod" in _read(log_file), _read(log_file)

            # the spec's oom_score_adj is applied in the guest
            assert exec_sync(cri, ids["web"], "cat", "/proc/1/oom_score_adj")[1] == "1000\n"

            # kubelet's stats come from the guest
            stats = cri.runtime.ContainerStats(
                api.ContainerStatsRequest(container_id=ids["hello"]), timeout=60).stats
            assert stats.memory.working_set_bytes.value > 0, stats

            # kubelet resizes a container: the limit reaches its cgroup in the guest
            cri.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
                container_id=ids["hello"],
                linux=api.LinuxContainerResources(memory_limit_in_bytes=200 << 20)),
                timeout=CALL_TIMEOUT)
            code, out, err = exec_sync(cri, ids["hello"], "sh", "-c",
                                       "cat /sys/fs/cgroup/memory.max "
                                       "/sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null")
            assert str(200 << 20) in out.split(), out + err
            # HTTP from the node netns to the pod IP reaches httpd in the VM
            got = None
            for _ in range(60):
                got = node.in_node("busybox", "wget", "-q", "-O", "-",
                                   f"http://{pod_ip}:{HTTP_PORT}/", timeout=30)
                if got.returncode == 0:
                    break
                time.sleep(1)
            assert got.returncode == 0 and got.stdout.strip() == PAGE, got.stderr

            # one container stopped (kubelet's grace period) and removed: the VM stays
            cri.runtime.StopContainer(api.StopContainerRequest(container_id=ids["web"],
                                                               timeout=2), timeout=CALL_TIMEOUT)
            status = cri.runtime.ContainerStatus(
                api.ContainerStatusRequest(container_id=ids["web"]), timeout=30).status
            assert status.state == api.CONTAINER_EXITED
            cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ids["web"]),
                                        timeout=CALL_TIMEOUT)
            assert len(qemu_pids(pod_id)) == 1
            assert exec_sync(cri, ids["hello"], "cat", "/proc/sys/kernel/random/boot_id")[1] \
                .strip() in boot_ids
        finally:
            cri.remove_pod(pod_id)
        assert not cri.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items

    assert_pod_gone(node, pod_id)


def _read(path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def test_negative_oom_scores_apply_in_the_guest_only():
    """Without restrict_oom_score_adj CRI asks -998 for the pause container and a
    negative score for a Guaranteed pod's containers: the host lacks CAP_SYS_RESOURCE
    (runc fails there), but pykata applies them inside the VM, never to QEMU."""
    with CriNode(restrict_oom_score_adj=False) as node, CriClient(node.address) as cri:
        api = cri.api
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="guaranteed", namespace="default",
                                            uid=f"uid-{node.tag}", attempt=0),
            log_directory=str(node.dir / "logs"),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            config = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="app", attempt=0),
                image=api.ImageSpec(image=BUSYBOX_IMAGE),
                command=["sleep", "600"],
                linux=api.LinuxContainerConfig(
                    resources=api.LinuxContainerResources(oom_score_adj=-997)),
            )
            cid = cri.start_container(pod_id, pod_config, config)
            # pid 1 of the pod's pid namespace (CRI's default) is the pause container
            assert exec_sync(cri, cid, "cat", "/proc/1/oom_score_adj") == (0, "-998\n", "")
            _, out, err = exec_sync(cri, cid, "sh", "-c", FIND_SLEEP + "; ps -o pid,args")
            assert out.splitlines()[0] == "-997", out + err
            [qemu] = qemu_pids(pod_id)
            assert int(_read(Path(f"/proc/{qemu}/oom_score_adj"))) >= 0
        finally:
            cri.remove_pod(pod_id)
        assert_pod_gone(node, pod_id)
    assert not os.path.exists(node.netns_path)


def test_shim_killed_then_the_pod_is_stopped_and_removed_cleanly(node):
    """kubelet's view of a crashed shim: the containers are gone; StopPodSandbox and
    RemovePodSandbox still succeed and leave nothing (containerd ran `shim delete`)."""
    import signal

    with CriClient(node.address) as cri:
        api = cri.api
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="crash", namespace="default",
                                            uid=f"uid-crash-{node.tag}", attempt=0),
            log_directory=str(node.dir / "logs"),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            config = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="app", attempt=0),
                image=api.ImageSpec(image=BUSYBOX_IMAGE), command=["sleep", "600"])
            cid = cri.start_container(pod_id, pod_config, config)
            assert len(qemu_pids(pod_id)) == 1
            shims = [p for p in _pids_with_arg(node.address) if "pykata" in _cmdline(p)]
            assert len(shims) == 1, shims  # one shim daemon for the whole pod
            os.kill(shims[0], signal.SIGKILL)
            deadline = time.monotonic() + 120
            state = None
            while time.monotonic() < deadline:
                state = cri.runtime.ContainerStatus(
                    api.ContainerStatusRequest(container_id=cid), timeout=30).status.state
                if state == api.CONTAINER_EXITED:
                    break
                time.sleep(0.5)
            assert state == api.CONTAINER_EXITED
        finally:
            cri.remove_pod(pod_id)
    assert_pod_gone(node, pod_id)


def test_two_pods_get_two_vms_that_reach_each_other(node):
    with CriClient(node.address) as cri:
        api = cri.api
        pods = {}
        try:
            for name in ("left", "right"):
                pod_config = api.PodSandboxConfig(
                    metadata=api.PodSandboxMetadata(name=name, namespace="default",
                                                    uid=f"uid-{name}-{node.tag}", attempt=0),
                    hostname=name,
                    log_directory=str(node.dir / "logs"),
                )
                pod_id = cri.run_pod(pod_config)
                pods[name] = pod_id
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name="web", attempt=0),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE), command=["sh", "-c", HTTPD])
                cid = cri.start_container(pod_id, pod_config, config)
                status = cri.runtime.PodSandboxStatus(
                    api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30).status
                pods[name] = (pod_id, cid, status.network.ip)
            assert [len(qemu_pids(pod_id)) for pod_id, _, _ in pods.values()] == [1, 1]
            boot_ids = {exec_sync(cri, cid, "cat", "/proc/sys/kernel/random/boot_id")[1]
                        for _, cid, _ in pods.values()}
            assert len(boot_ids) == 2
            # pod to pod, VM to VM, through the node's CNI bridge
            (_, left, _), (_, _, right_ip) = pods["left"], pods["right"]
            got = (1, "", "")
            for _ in range(60):
                # (no -T: busybox 1.35's static wget segfaults with it, on the host too)
                got = exec_sync(cri, left, "wget", "-q", "-O", "-",
                                f"http://{right_ip}:{HTTP_PORT}/")
                if got[0] == 0:
                    break
                time.sleep(1)
            assert got[0] == 0 and got[1].strip() == PAGE, got
        finally:
            for value in pods.values():
                pod_id = value[0] if isinstance(value, tuple) else value
                cri.remove_pod(pod_id)
    for value in pods.values():
        assert_pod_gone(node, value[0])


def test_a_failed_container_is_replaced_in_the_same_vm_and_exec_timeouts_kill(node):
    """kubelet's restart of a failed container (Remove, then Create attempt 1 in the running
    pod), and ExecSync past its timeout (the process is killed in the guest)."""
    import grpc

    with CriClient(node.address) as cri:
        api = cri.api
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="restarts", namespace="default",
                                            uid=f"uid-restarts-{node.tag}", attempt=0),
            log_directory=str(node.dir / "logs"),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            [qemu] = qemu_pids(pod_id)

            def run(attempt: int, script: str) -> str:
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name="app", attempt=attempt),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE), command=["sh", "-c", script],
                    log_path=f"app-{attempt}.log")
                cid = cri.start_container(pod_id, pod_config, config)
                return cid

            failed = run(0, "echo failing; exit 3")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = cri.runtime.ContainerStatus(
                    api.ContainerStatusRequest(container_id=failed), timeout=30).status
                if status.state == api.CONTAINER_EXITED:
                    break
                time.sleep(0.5)
            assert (status.state, status.exit_code) == (api.CONTAINER_EXITED, 3)
            cri.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=failed),
                                        timeout=CALL_TIMEOUT)
            assert qemu_pids(pod_id) == [qemu]  # the pod's VM outlives its containers

            again = run(1, "sleep 600")
            assert exec_sync(cri, again, "echo", "back")[:2] == (0, "back\n")
            assert qemu_pids(pod_id) == [qemu]

            with pytest.raises(grpc.RpcError) as caught:
                cri.runtime.ExecSync(api.ExecSyncRequest(
                    container_id=again, cmd=["sleep", "77"], timeout=2), timeout=CALL_TIMEOUT)
            assert "timeout" in caught.value.details(), caught.value.details()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ps = exec_sync(cri, again, "ps", "-o", "args")[1]
                if "sleep 77" not in ps:
                    break
                time.sleep(1)
            assert "sleep 77" not in ps, ps
        finally:
            cri.remove_pod(pod_id)
    assert_pod_gone(node, pod_id)


def test_a_host_network_pod_runs_in_a_vm_without_a_nic(node):
    """hostNetwork: CRI gives no pod netns (and leaves the UTS namespace out while setting
    a hostname). A VM cannot share the node's network: the pod runs with only lo, as
    `ctr run` without a netns does. (Whether to refuse such pods instead is open.)"""
    with CriClient(node.address) as cri:
        api = cri.api
        host_net = api.NamespaceOption(network=api.NODE)
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="hostnet", namespace="default",
                                            uid=f"uid-hostnet-{node.tag}", attempt=0),
            hostname="hostnet-pod",
            linux=api.LinuxPodSandboxConfig(
                security_context=api.LinuxSandboxSecurityContext(namespace_options=host_net)),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            config = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="app", attempt=0),
                image=api.ImageSpec(image=BUSYBOX_IMAGE), command=["sleep", "600"],
                linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
                    namespace_options=host_net)))
            cid = cri.start_container(pod_id, pod_config, config)
            code, out, err = exec_sync(cri, cid, "sh", "-c", "hostname; ls /sys/class/net")
            assert (code, out.split()) == (0, ["hostnet-pod", "lo"]), out + err
        finally:
            cri.remove_pod(pod_id)
    assert_pod_gone(node, pod_id)


def test_containerd_2_sandbox_api_runs_a_pod_without_a_pause_container():
    """`sandboxer = "shim"`: containerd asks the shim for the pod; no pause container."""
    with CriNode(line="2", sandboxer="shim") as node, CriClient(node.address) as cri:
        api = cri.api
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="nopause", namespace="default",
                                            uid=f"uid-{node.tag}", attempt=0),
            hostname="sandbox-api-pod",
            log_directory=str(node.dir / "logs"),
            dns_config=api.DNSConfig(servers=["198.18.4.53"], searches=["pod.test"]),
            linux=api.LinuxPodSandboxConfig(),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            status = cri.runtime.PodSandboxStatus(
                api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30).status
            assert status.state == api.SANDBOX_READY
            assert status.network.ip.startswith("198.18.4."), status.network.ip
            [qemu] = qemu_pids(pod_id)
            # no pause container anywhere: containerd holds no container for the pod itself
            assert node.containerd.ctr("containers", "ls", "-q").stdout.split() == []
            ids = []
            for name in ("one", "two"):
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name=name, attempt=0),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE),
                    command=["sh", "-c", f"echo {name} > /tmp/me; sleep 600"],
                    log_path=f"{name}.log",
                    linux=api.LinuxContainerConfig(),
                )
                ids.append(cri.start_container(pod_id, pod_config, config))
            assert qemu_pids(pod_id) == [qemu], "both containers run in the pod's one VM"
            code, out, err = exec_sync(cri, ids[0], "sh", "-c",
                                       "uname -r; hostname; cat /etc/resolv.conf")
            assert code == 0, err
            kernel, hostname, *resolv = out.splitlines()
            assert kernel.startswith("6.1.") and kernel != os.uname().release
            assert hostname == "sandbox-api-pod"
            assert "nameserver 198.18.4.53" in resolv and "search pod.test" in resolv
            code, out, _ = exec_sync(cri, ids[1], "cat", "/tmp/me")
            assert (code, out.strip()) == (0, "two")
            listed = cri.runtime.ListContainers(api.ListContainersRequest(), timeout=30)
            assert sorted(c.id for c in listed.containers) == sorted(ids)

            cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                       timeout=CALL_TIMEOUT)
            deadline = time.monotonic() + 30
            while qemu_pids(pod_id) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not qemu_pids(pod_id), "StopSandbox left the VM running"
            status = cri.runtime.PodSandboxStatus(
                api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30).status
            assert status.state == api.SANDBOX_NOTREADY
        finally:
            try:
                cri.remove_pod(pod_id)
            except Exception:
                print(node.containerd.log_tail(80))
                raise
        assert_pod_gone(node, pod_id)
        log = node.containerd.log_path.read_text(errors="replace")
        assert "failed to load runtime info" not in log
