"""One pod = one VM: state directory, shared folder, the VM, and the agent's sandbox."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from typing import Any

import structlog

import ttrpc
from protos.kata import agent_pb2
from pykata_common.contract import GUEST_SHARED_DIR, SHARED_FS_TAG
from shim.config import Config
from shim.guest_agent import GuestAgent
from shim.paths import sandbox_dir
from shim.sandbox import teardown
from shim.sandbox.mounts import MountSpec, mount_all
from shim.sandbox.record import ContainerRecord, SandboxRecord
from shim.sandbox.shared_fs import SharedDir
from shim.spec_support import SpecError
from shim.vmm import procs

log = structlog.get_logger(__name__)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# the share's folder for the pod's volumes: no container id starts with a dot
POD_VOLUMES = ".volumes"


class SandboxError(Exception):
    """Starting or changing the sandbox failed; the message names the cause."""


def vm_config(
    config: Config,
    netns: str | None,
    nics: list[Any] | None = None,
    size: tuple[int, int] | None = None,
) -> Any:
    """The vmm layer's VMConfig from our configuration (and the pod network's NICs, and
    the VM's (vcpus, memory MiB) when the pod's limits sized it)."""
    from shim.vmm import VMConfig

    hv = config.hypervisor
    max_vcpus, max_memory_mib = hv.maxima()
    return VMConfig(
        qemu_path=hv.path,
        kernel=hv.kernel,
        initrd=hv.initrd,
        image=hv.image or None,
        machine_type=hv.machine_type,
        vcpus=size[0] if size else hv.default_vcpus,
        memory_mib=size[1] if size else hv.default_memory,
        max_vcpus=max_vcpus,
        max_memory_mib=max_memory_mib,
        kernel_params=hv.kernel_params.split(),
        debug=hv.enable_debug or config.agent.enable_debug,
        shared_fs=hv.shared_fs,
        virtiofsd_path=hv.virtio_fs_daemon,
        virtiofsd_extra_args=list(hv.virtio_fs_extra_args),
        virtiofs_cache=hv.virtio_fs_cache,
        accel=hv.accel,
        tcg_cache_mib=hv.tcg_cache_size,
        agent_transport=hv.agent_transport,
        vhost_vsock_daemon=hv.vhost_user_vsock_daemon,
        netns=netns,
        nics=list(nics or []),
        agent_timeout=config.agent.dial_timeout,
        debug_console=config.agent.debug_console_enabled,
        free_page_reporting=hv.reclaim_guest_freed_memory,
        confinement=hv.confinement_floor(),
        template_path=config.factory.template_path if config.factory.enable_template else None,
    )


class Sandbox:
    """The VM of one pod and what the host set up for it."""

    def __init__(self, namespace: str, sandbox_id: str, config: Config) -> None:
        self.namespace = namespace
        self.id = sandbox_id
        self.config = config
        self.state_dir = sandbox_dir(namespace, sandbox_id)
        self.shared = SharedDir(self.state_dir)
        self.record = SandboxRecord(
            namespace, sandbox_id, os.getpid(), procs.start_time(os.getpid()) or 0
        )
        self.vm: Any = None
        self.agent: GuestAgent | None = None  # the VM's, once it answered
        self.network: Any = None  # shim.netns.pod.PodNetwork
        self.cgroup: Any = None  # shim.sandbox.cgroup.PodCgroup the daemon joined
        self._stopped = False
        self._volumes: dict[tuple[str, bool], str] = {}  # (host folder, ro) -> guest path

    @property
    def pid(self) -> int:
        """QEMU's pid: what the Task API reports for every process of the pod."""
        return self.vm.pid if self.vm is not None else 0

    async def start(
        self,
        *,
        netns: str | None,
        hostname: str = "",
        dns: list[str] | None = None,
        cgroup_path: str | None = None,
        sandbox_pidns: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Boot the VM and create the agent's sandbox; on failure undo everything.

        netns: the pod's network namespace (None: no network); hostname and dns
        (resolv.conf lines) are the pod's, given to the agent; cgroup_path: the pod's
        cgroup, which this daemon joins before starting virtiofsd and QEMU when
        [runtime] sandbox_cgroup_only is on (None: they stay where the daemon is);
        sandbox_pidns: the agent makes the pod-shared pid namespace itself (no pause
        container will hold one: the Sandbox API); size: (vcpus, memory MiB), else the
        configured defaults.
        """
        if netns is not None:
            from shim.netns.nsenter import check_pod_netns

            check_pod_netns(netns)
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            raise SandboxError(f"sandbox state {self.state_dir} already exists")
        from shim.paths import private_dir

        private_dir(self.state_dir)  # and STATE_ROOT, its namespace: 0700
        self.record.save(self.state_dir)
        try:
            if cgroup_path is not None and self.config.runtime.sandbox_cgroup_only:
                self._join_cgroup(cgroup_path)
            if self.config.hypervisor.shared_fs == "virtio-fs":
                self.shared.setup()
            from shim.netns.pod import setup as setup_network
            from shim.vmm import start_vm

            self.network = await setup_network(
                model=self.config.runtime.internetworking_model,
                netns=netns,
                state_dir=self.state_dir,
                sandbox_id=self.id,
                vcpus=size[0] if size else self.config.hypervisor.default_vcpus,
            )
            try:
                self.vm = await start_vm(
                    vm_config(self.config, netns, self.network.nics, size),
                    self.state_dir,
                    self.shared.shared,
                )
            finally:
                self.network.release_fds()  # QEMU has its own copies of the macvtap queues
            self.agent = self.vm.agent
            await self.network.configure_guest(self.agent)
            await self._create_agent_sandbox(hostname, dns or [], sandbox_pidns)
        except BaseException:
            await self.stop()
            raise

    async def _create_agent_sandbox(
        self, hostname: str, dns: list[str], sandbox_pidns: bool = False
    ) -> None:
        storages = []
        if self.config.hypervisor.shared_fs == "virtio-fs":
            storages.append(
                agent_pb2.Storage(
                    driver="virtio-fs",
                    source=SHARED_FS_TAG,
                    fstype="virtiofs",
                    mount_point=GUEST_SHARED_DIR,
                    options=[],
                )
            )
        assert self.agent is not None
        try:
            await self.agent.create_sandbox(
                self.id,
                hostname=hostname,
                dns=dns,
                storages=storages,
                sandbox_pidns=sandbox_pidns,
            )
        except ttrpc.TTRPCError as exc:
            raise SandboxError(f"agent CreateSandbox failed: {exc}") from exc

    def add_container(
        self,
        container_id: str,
        bundle: str,
        rootfs: list[MountSpec],
        root_path: str = "rootfs",
    ) -> str:
        """Mount a container's rootfs and share it; returns its root path in the guest.

        root_path is the spec's root.path: relative to the bundle (containerd's "rootfs",
        where the rootfs mounts go), or a folder the caller prepared and gives with no
        mounts (Docker's graph drivers, `ctr run --rootfs`), shared as it is. It is
        shared writable even when root.readonly is set: the runtime in the guest creates
        the mount points the spec needs in it (as runc does on a host), then mounts it
        read-only for the container."""
        record = ContainerRecord(bundle=bundle)
        self.record.containers[container_id] = record
        self.record.save(self.state_dir)
        rootfs_path = os.path.join(bundle, root_path)  # an absolute root_path stays itself
        if rootfs:
            os.makedirs(rootfs_path, exist_ok=True)
            mount_all(rootfs, rootfs_path)
            record.rootfs_mounted = True
            self.record.save(self.state_dir)
        if self.config.hypervisor.shared_fs != "virtio-fs":
            raise SandboxError("shared_fs = none cannot carry a container rootfs yet")
        if not os.path.isdir(rootfs_path):
            raise SpecError(
                f"the container's root {rootfs_path} is not a folder (the spec's root.path, "
                "with no rootfs mounts in the request)"
            )
        return self.shared.share_dir(container_id, "rootfs", rootfs_path)

    def share_mount(
        self, container_id: str, index: int, source: str, *, readonly: bool = False
    ) -> str:
        """Share a bind mount's host source with the guest (read-only on the host when
        the mount is); its guest path.

        A folder is the pod's: shared once, however many of its containers mount it (a
        kubelet emptyDir, any volume), so that it is one filesystem in the guest and a
        socket, a lock or an inotify watch works across them. It stays until the pod
        ends. A file is each container's own (termination logs, /etc/hosts)."""
        # the name is the spec's: only safe characters, short enough for any filesystem
        base = _UNSAFE_NAME.sub("_", os.path.basename(source.rstrip("/")))[:64] or "root"
        if not os.path.isdir(source):
            name = f"mount-{index}-{base}"
            return self.shared.share_dir(container_id, name, source, readonly=readonly)
        key = (os.path.realpath(source), readonly)
        shared = self._volumes.get(key)
        if shared is None:
            digest = hashlib.sha256(f"{key[0]}\0{readonly}".encode()).hexdigest()[:12]
            shared = self.shared.share_dir(
                POD_VOLUMES, f"{digest}-{base}", source, readonly=readonly
            )
            self._volumes[key] = shared
        return shared

    def _join_cgroup(self, path: str) -> None:
        from shim.sandbox.cgroup import PodCgroup

        self.cgroup = PodCgroup.join(path, os.getpid())
        self.cgroup.save(self.state_dir)
        log.info("sandbox cgroup joined", sandbox=self.id, cgroup=path, made=self.cgroup.made)

    async def grow(self, vcpus: int, memory_mib: int) -> None:
        """Hot-plug the VM up to (vcpus, memory_mib) and have the guest bring it online.
        ResizeError (shim.vmm.resize) naming the limit it would pass; then nothing
        changed."""
        assert self.vm is not None and self.agent is not None
        added_cpus, added_memory = await self.vm.grow(vcpus, memory_mib)
        if added_cpus or added_memory:
            await self.agent.online_cpu_mem(added_cpus, cpu_only=not added_memory)

    def remove_container(self, container_id: str) -> None:
        """Unshare and unmount a container's rootfs; forget it."""
        teardown.forget_container(self.state_dir, self.record, container_id)

    async def stop(self) -> None:
        """Destroy the agent's sandbox, stop the VM, then release the host side. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await self.agent.destroy_sandbox()
        if self.vm is not None:
            try:
                await self.vm.stop()
            except Exception as exc:  # keep cleaning up whatever happens
                log.error("stopping the VM failed", error=str(exc))
        if self.network is not None:
            self.network.release_fds()
        from shim.netns.nsenter import in_own_thread

        def report(line: str) -> None:
            log.info("sandbox cleanup", action=line, sandbox=self.id)

        if self.cgroup is not None:  # out of it, so that teardown can remove it
            self.cgroup.leave(os.getpid())
        await in_own_thread(teardown.release, self.state_dir, self.record, report)


def network_namespace(spec: dict[str, Any]) -> str | None:
    """The pod netns path from the OCI spec (None: no network namespace given)."""
    for namespace in (spec.get("linux") or {}).get("namespaces") or []:
        if namespace.get("type") == "network" and namespace.get("path"):
            return namespace["path"]
    return None
