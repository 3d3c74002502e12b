"""What the shim hands the guest for CRI's containers: namespaces given by host path
(/proc/<sandbox pid>/ns/...) never reach the guest; a pod-shared pid namespace becomes
the agent's sandbox_pidns."""

from shim.pod.container import Container, PodGifts, shares_pod_pidns
from shim.pod.process import Process, Stdio

SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}
APP = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "p1"}


def cri_spec(annotations, namespaces):
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/"},
        "annotations": annotations,
        "linux": {"namespaces": namespaces},
    }


def guest_namespaces(spec):
    container = Container("c1", "/b", spec, Process("c1", "", 1, Stdio("", "", "", False)))
    guest = container.guest_spec("/run/kata-containers/shared/c1/rootfs", share=None)
    return [(ns.Type, ns.Path) for ns in guest.Linux.Namespaces]


def test_the_sandbox_container_keeps_its_new_namespaces_and_holds_the_pidns():
    """...but the IPC one: the pod's is the VM's, where its apps are (their specs name
    the sandbox's by a host path), so that the pod's IPC sysctls reach them."""
    spec = cri_spec(SANDBOX, [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
                    + [{"type": "network", "path": "/var/run/netns/cni-1"}])
    assert guest_namespaces(spec) == [("pid", ""), ("uts", ""), ("mount", "")]
    assert shares_pod_pidns(spec)


def test_an_app_container_drops_host_namespace_paths():
    spec = cri_spec(APP, [
        {"type": "pid", "path": "/proc/42/ns/pid"},
        {"type": "ipc", "path": "/proc/42/ns/ipc"},
        {"type": "uts", "path": "/proc/42/ns/uts"},
        {"type": "mount"},
        {"type": "network", "path": "/proc/42/ns/net"},
    ])
    assert guest_namespaces(spec) == [("mount", "")]
    assert shares_pod_pidns(spec)


def test_an_app_container_with_its_own_pidns_does_not_join_the_pod_one():
    spec = cri_spec(APP, [{"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"}])
    assert guest_namespaces(spec) == [("pid", "")]
    assert not shares_pod_pidns(spec)
    assert not shares_pod_pidns(cri_spec({}, [{"type": "pid"}]))  # ctr run


def test_a_hostname_without_a_uts_namespace_gets_one_in_the_guest():
    spec = cri_spec(SANDBOX, [{"type": "pid"}, {"type": "ipc"}])  # CRI, hostNetwork pod
    spec["hostname"] = "node-1"
    assert guest_namespaces(spec) == [("pid", ""), ("uts", "")]
    assert guest_namespaces(cri_spec(APP, [{"type": "uts", "path": "/proc/42/ns/uts"}])) == []


def test_the_pods_sysctls_are_given_where_the_spec_sets_none():
    """A Sandbox API pod has no sandbox container to carry them: each container gets them."""
    spec = cri_spec(APP, [])
    spec["linux"]["sysctl"] = {"net.ipv4.ping_group_range": "0 0"}
    container = Container("c1", "/b", spec, Process("c1", "", 1, Stdio("", "", "", False)))
    gifts = PodGifts(sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ping_group_range": "1 1"})
    guest = container.guest_spec("/rootfs", share=None, given=gifts)
    assert dict(guest.Linux.Sysctl) == {"kernel.shm_rmid_forced": "1",
                                        "net.ipv4.ping_group_range": "0 0"}


def test_a_memory_emptydir_becomes_the_pods_tmpfs_in_the_guest(tmp_path):
    """kubelet mounts a tmpfs for `medium: Memory`: the guest gets a tmpfs of that size
    (Kata's ephemeral storage), not a virtiofs share of the host's RAM."""
    from shim.pod.container import memory_volume
    from shim.sandbox.mounts import mount, unmount_all_under

    volumes = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir"
    memory, disk = volumes / "cache", volumes / "scratch"
    memory.mkdir(parents=True)
    disk.mkdir()
    mount("tmpfs", str(memory), "tmpfs", 0, "size=64m")
    try:
        spec = cri_spec(APP, [])
        spec["mounts"] = [{"destination": "/cache", "type": "bind", "source": str(memory),
                           "options": ["rbind", "rw"]}]
        container = Container("c1", "/b", spec, Process("c1", "", 1, Stdio("", "", "", False)))
        guest = container.guest_spec("/rootfs", share=None)
        [storage] = container.storages
        assert (storage.driver, storage.fstype, list(storage.options)) == (
            "ephemeral", "tmpfs", [f"size={64 << 20}"])
        assert storage.mount_point == "/run/kata-containers/sandbox/ephemeral/cache"
        assert guest.Mounts[0].source == storage.mount_point
        assert memory_volume(str(disk)) is None  # a folder on disk is shared as it is
        assert memory_volume(str(tmp_path)) is None  # not kubelet's layout
    finally:
        unmount_all_under(str(memory))
