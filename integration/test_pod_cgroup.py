"""The VM lives in the pod's cgroup ([runtime] sandbox_cgroup_only, on by default): QEMU,
virtiofsd, vhost-device-vsock and the shim daemon are in the cgroup containerd (`ctr
run`) or CRI (the pod's cgroup_parent, both sandboxers) names for the sandbox, so the
pod's limits bound the whole VM; the cgroup goes with the pod. When the VM outgrows the
pod's memory limit the host's OOM killer ends QEMU inside that cgroup, and the pod dies
as a VM death does."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from integration.containerd_env import BUSYBOX_IMAGE
from integration.containerd_versions import CONTAINERD_LINES
from integration.cri_env import CRI_NAMESPACE, CriClient, CriNode
from integration.pykata_env import (
    RUNTIME,
    STATE_ROOT,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from shim.sandbox.cgroup import hierarchies

pytestmark = pytest.mark.integration
MEMORY_ROOT = next((Path(h.mountpoint) for h in hierarchies() if "memory" in h.controllers), None)


def memory_cgroup(pid: int) -> str:
    """The cgroup of `pid` in the memory hierarchy (v1) or the unified one (v2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))


def pod_processes(namespace: str, sandbox_id: str) -> dict[str, int]:
    """The shim daemon, QEMU, virtiofsd and (with hybrid vsock, what `auto` picks where
    the daemon is installed) vhost-device-vsock of a sandbox, from its state files."""
    state = STATE_ROOT / namespace / sandbox_id
    record = json.loads((state / "sandbox.json").read_text())
    vm = json.loads((state / "vm.json").read_text())
    found = {"shim": record["shim_pid"]}
    found.update({name: p["pid"] for name, p in vm["processes"].items()})
    expected = {"shim", "qemu", "virtiofsd"}
    if vm["agent"]["address"].startswith("hvsock://"):
        expected.add("vhost-vsock")
    assert set(found) == expected, found
    return found


def assert_in_cgroup(namespace: str, sandbox_id: str, expected: str) -> None:
    where = {name: memory_cgroup(pid) for name, pid in pod_processes(namespace, sandbox_id).items()}
    assert where == dict.fromkeys(where, expected), where
    assert memory_cgroup(os.getpid()) != expected


def pod_config(cri: CriClient, node: CriNode, name: str, cgroup_parent: str):
    """A pod whose cgroup parent is `cgroup_parent` (what kubelet gives)."""
    api = cri.api
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default",
                                        uid=f"uid-{name}-{node.tag}", attempt=0),
        hostname=f"{name}-pod",
        log_directory=str(node.dir / "logs"),
        linux=api.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )


def wait_gone(path: Path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not path.exists()


def test_ctr_run_puts_the_vm_in_the_container_cgroup(containerd, busybox_image):
    ensure_shim_on_path()
    ensure_guest_assets()
    cd = containerd
    cid = f"cg-{uuid.uuid4().hex[:8]}"
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, cid, "sleep", "600",
                    timeout=300)
    assert result.returncode == 0, result.stderr
    try:
        spec = json.loads(cd.ctr("containers", "info", cid).stdout)["Spec"]
        expected = spec["linux"].get("cgroupsPath") or f"/pykata/{cd.namespace}/{cid}"
        assert_in_cgroup(cd.namespace, cid, expected)
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        cd.ctr("task", "rm", "-f", cid, timeout=60)
        cd.ctr("container", "rm", cid)
    assert_nothing_left()
    assert MEMORY_ROOT is None or wait_gone(MEMORY_ROOT / expected.lstrip("/"))


@pytest.mark.parametrize(
    ("line", "sandboxer"),
    [*((line, "") for line in CONTAINERD_LINES), ("2", "shim")],
    ids=lambda value: str(value) or "pause",
)
def test_a_cri_pod_vm_is_in_the_pod_cgroup(line, sandboxer):
    ensure_shim_on_path()
    ensure_guest_assets()
    parent = f"/pykata-test-pods/pod-{uuid.uuid4().hex[:8]}"
    with CriNode(line=line, sandboxer=sandboxer) as node, CriClient(node.address) as cri:
        pod_id = cri.run_pod(pod_config(cri, node, "cg", parent))
        try:
            assert_in_cgroup(CRI_NAMESPACE, pod_id, f"{parent}/{pod_id}")
        finally:
            cri.remove_pod(pod_id)
        assert MEMORY_ROOT is None or wait_gone(MEMORY_ROOT / parent.lstrip("/") / pod_id)
    _remove_test_cgroups(parent)


def _remove_test_cgroups(parent: str) -> None:
    """The folders kubelet would own (the pod's parent): the test made them, it removes them."""
    for hierarchy in hierarchies():
        for folder in (Path(hierarchy.mountpoint, parent.lstrip("/")),
                       Path(hierarchy.mountpoint, "pykata-test-pods")):
            with contextlib.suppress(OSError):
                folder.rmdir()


@pytest.mark.skipif(MEMORY_ROOT is None or not (MEMORY_ROOT / "memory.limit_in_bytes").exists(),
                    reason="needs a cgroup v1 memory hierarchy (these machines)")
def test_a_vm_that_outgrows_the_pod_memory_limit_stays_inside_it():
    """kubelet's part played by the test: once the pod runs, its cgroup is limited to what
    it uses plus 128 MiB; a container then allocates without end (no limit of its own).
    QEMU cannot take more than the limit: the host's OOM killer ends it inside the pod's
    cgroup, and the containers' exits say the VM died."""
    ensure_shim_on_path()
    ensure_guest_assets()
    parent = f"/pykata-test-pods/oom-{uuid.uuid4().hex[:8]}"
    pod_cgroup = MEMORY_ROOT / parent.lstrip("/")
    pod_cgroup.mkdir(parents=True)
    try:
        with CriNode(line="2") as node, CriClient(node.address) as cri:
            api = cri.api
            pod = pod_config(cri, node, "oom", parent)
            pod_id = cri.run_pod(pod)
            try:
                used = int((pod_cgroup / "memory.usage_in_bytes").read_text())
                limit = used + (128 << 20)
                (pod_cgroup / "memory.limit_in_bytes").write_text(str(limit))
                (pod_cgroup / "memory.max_usage_in_bytes").write_text("0")
                config = api.ContainerConfig(
                    metadata=api.ContainerMetadata(name="hog", attempt=0),
                    image=api.ImageSpec(image=BUSYBOX_IMAGE),
                    command=["sh", "-c", "a=x; while :; do a=$a$a; done"],
                    log_path="hog.log",
                    linux=api.LinuxContainerConfig(),
                )
                cid = cri.start_container(pod_id, pod, config)
                status = cri.wait_exited(cid, timeout=240)
                assert status.state == api.CONTAINER_EXITED, "the VM was not stopped at the limit"
                assert status.exit_code == 255, status  # the pod's VM died
                peak = int((pod_cgroup / "memory.max_usage_in_bytes").read_text())
                assert peak <= limit, (peak, limit)
                assert int((pod_cgroup / "memory.failcnt").read_text()) > 0
                print(f"pod cgroup: {used >> 20} MiB used idle, limit {limit >> 20} MiB, "
                      f"peak {peak >> 20} MiB")
            finally:
                cri.remove_pod(pod_id)
    finally:
        _remove_test_cgroups(parent)
