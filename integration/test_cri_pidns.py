"""A pod-shared pid namespace (shareProcessNamespace: CRI pid POD) is the pod's own, on
both doors of containerd 2.x: the pause container's (sandboxer "podsandbox") or the one
the agent makes for the pod (sandboxer "shim", no pause container). From a container the
guest's root namespace is out of sight: no agent (PID 1 of the VM), no kernel threads,
nothing to signal but the pod's own processes; the pod's containers see each other.
"""

from __future__ import annotations

import os

import pytest

from integration.containerd_env import BUSYBOX_IMAGE
from integration.cri_env import CriClient, CriNode
from integration.pykata_env import ensure_guest_assets, ensure_shim_on_path
from integration.test_cri import CALL_TIMEOUT, assert_pod_gone, exec_sync, qemu_pids

pytestmark = pytest.mark.integration

# one line per process the container sees: "<pid> <comm> <cmdline>"
LIST_PROCESSES = (
    'for d in /proc/[0-9]*; do [ -e "$d/comm" ] && '
    'echo "${d#/proc/} $(cat $d/comm) $(tr "\\0" " " < $d/cmdline)"; done'
)
# what runs in the pod's namespace besides its PID 1: the containers' sleeps, this
# exec's shell and its subshells (cat, tr)
POD_COMMANDS = ("sh", "sleep", "cat", "tr")
# PID 1 of the pod's namespace, per door: the agent's pause process, or the test's pause
# image (cri_env.PAUSE_CMD)
POD_INIT = {"shim": "pause.py", "": "trap 'exit 0' TERM"}


@pytest.fixture(scope="module", params=["", "shim"], ids=["pause-container", "sandbox-api"])
def node(request):
    ensure_shim_on_path()
    ensure_guest_assets()
    if not os.path.exists("/usr/lib/cni/bridge"):
        pytest.fail("CNI plugins missing: apt-get install containernetworking-plugins")
    with CriNode(line="2", sandboxer=request.param) as made:
        yield made
    assert not os.path.exists(made.netns_path)


def processes(listing: str) -> dict[int, tuple[str, str]]:
    """LIST_PROCESSES' lines: pid -> (comm, cmdline). A process that ended while it was
    being listed (its comm read empty) is left out."""
    found = {}
    for line in listing.splitlines():
        pid, comm, *args = line.split(" ")
        if comm:
            found[int(pid)] = (comm, " ".join(args).strip())
    return found


def test_a_shared_pid_namespace_holds_the_pod_and_nothing_of_the_guest(node):
    with CriClient(node.address) as cri:
        api = cri.api
        shared = api.NamespaceOption(pid=api.POD)
        pod_config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name="pidns", namespace="default",
                                            uid=f"uid-pidns-{node.tag}", attempt=0),
            hostname="pidns-pod",
            log_directory=str(node.dir / "logs"),
            linux=api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
                namespace_options=shared)),
        )
        pod_id = cri.run_pod(pod_config)
        try:
            [qemu] = qemu_pids(pod_id)
            ids = {}
            for name, seconds, mode in (("one", "601", api.POD), ("two", "602", api.POD),
                                        ("own", "603", api.CONTAINER)):
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name=name, attempt=0),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE),
                    command=["sleep", seconds],
                    log_path=f"{name}.log",
                    linux=api.LinuxContainerConfig(
                        security_context=api.LinuxContainerSecurityContext(
                            namespace_options=api.NamespaceOption(pid=mode))),
                )
                ids[name] = cri.start_container(pod_id, pod_config, config)
            pod_init = POD_INIT[node.sandboxer]

            code, out, err = exec_sync(cri, ids["two"], "sh", "-c", LIST_PROCESSES)
            assert code == 0, err
            seen = processes(out)
            # PID 1 is the pod's own init, never the agent (`python3.11 -S -m agent`)
            assert pod_init in seen[1][1], seen
            # the containers sharing the namespace see each other, not the one on its own
            commands = {cmdline for _, cmdline in seen.values()}
            assert {"sleep 601", "sleep 602"} <= commands, seen
            assert "sleep 603" not in commands, seen
            # nothing else of the guest: no agent, no kernel thread (kthreadd, kworker/...)
            for pid, (comm, cmdline) in seen.items():
                assert "-m agent" not in cmdline, seen
                # busybox may run an applet by re-executing /proc/self/exe: its comm is
                # then "exe" (the pause loop's `sleep 1` was seen so once in CI)
                applet = comm == "exe" and cmdline.split(" ")[0] in POD_COMMANDS
                assert pid == 1 or comm in POD_COMMANDS or applet, (pid, comm, cmdline)

            # the container on its own is PID 1 of its own namespace
            own_init = exec_sync(cri, ids["own"], "cat", "/proc/1/cmdline")
            assert own_init[:2] == (0, "sleep\x00603\x00"), own_init

            # PID 1 is there to signal (CAP_KILL), and it is the pod's
            code, out, err = exec_sync(cri, ids["one"], "sh", "-c",
                                       "kill -0 1 && tr '\\0' ' ' < /proc/1/cmdline")
            assert code == 0 and pod_init in out, out + err

            if node.sandboxer == "shim":
                # the agent's pause process: nobody, and deaf to every signal from the pod
                code, out, err = exec_sync(cri, ids["one"], "sh", "-c",
                                           "grep ^Uid: /proc/1/status; "
                                           "for s in TERM INT HUP QUIT USR1 KILL; do "
                                           "kill -$s 1 || echo refused $s; done")
                assert code == 0, out + err
                assert out.split()[:2] == ["Uid:", "65534"] and "refused" not in out, out
                # ...and still PID 1 after all that: the pod, its VM and the agent go on
                code, out, err = exec_sync(cri, ids["two"], "sh", "-c",
                                           "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -o args")
                assert code == 0 and pod_init in out.splitlines()[0], out + err
                assert "sleep 601" in out, out
                for cid in ids.values():
                    state = cri.runtime.ContainerStatus(
                        api.ContainerStatusRequest(container_id=cid), timeout=30).status.state
                    assert state == api.CONTAINER_RUNNING
            assert qemu_pids(pod_id) == [qemu]
        finally:
            try:
                cri.remove_pod(pod_id, timeout=CALL_TIMEOUT)
            except Exception:
                print(node.containerd.log_tail(80))
                raise
    assert_pod_gone(node, pod_id)
