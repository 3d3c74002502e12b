"""A container of the pod: its init and exec processes, and the OCI spec and volumes it
gives the guest."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from shim.oci import SpecError, spec_to_kata
from shim.paths import CONTAINER_TYPE_ANNOTATION
from shim.pod.errors import NotFound
from shim.pod.process import Process
from shim.pod.sizing import PodLimits
from shim.sandbox.mounts import MountSpec

log = structlog.get_logger(__name__)
# kubelet's emptyDir layout; the name is a Kubernetes volume name (a DNS label)
EMPTY_DIR = re.compile(r"/volumes/kubernetes\.io~empty-dir/([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)$")
GUEST_EPHEMERAL_DIR = "/run/kata-containers/sandbox/ephemeral"  # Kata's place for them


class UnknownExec(NotFound):
    """An exec id the container does not have."""


class Share(Protocol):
    """Where a container's bind sources are shared with the guest (the pod's Sandbox)."""

    id: str

    def share_mount(
        self, container_id: str, index: int, source: str, *, readonly: bool = False
    ) -> str: ...


def shares_pod_pidns(spec: dict[str, Any]) -> bool:
    """Whether the guest must put a container with this spec in the pod's pid namespace.

    CRI's sandbox (pause) container holds it (the agent makes the first container
    created with sandbox_pidns the holder); a container whose spec joins a pid
    namespace by path (CRI: the sandbox's, shareProcessNamespace) joins the holder's.
    """
    if (spec.get("annotations") or {}).get(CONTAINER_TYPE_ANNOTATION) == "sandbox":
        return True
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return any(ns.get("type") == "pid" and ns.get("path") for ns in namespaces)


@dataclass(frozen=True)
class PodGifts:
    """What a pod without a pause container (the Sandbox API's) gives each container
    that does not set it itself: files (destination -> host file, bound in: the pod's
    hostname, hosts and resolver) and the pod's sysctls."""

    files: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class Container:
    """A container of the sandbox, with its init process and its execs."""

    id: str
    bundle: str
    spec: dict[str, Any]
    init: Process
    execs: dict[str, Process] = field(default_factory=dict)
    rootfs: list[MountSpec] = field(default_factory=list)  # mounted by the host, shared
    limits: PodLimits = field(default_factory=PodLimits)  # its CPU quota and memory limit
    # what the guest mounts for it first (a memory emptyDir's tmpfs: agent Storage)
    storages: list[Any] = field(default_factory=list)
    # host source of each shared bind mount -> its path in the guest
    shared_sources: dict[str, str] = field(default_factory=dict)

    def process(self, exec_id: str) -> Process:
        """The init ("" ) or an exec; UnknownExec for an id it does not have."""
        if not exec_id:
            return self.init
        found = self.execs.get(exec_id)
        if found is None:
            raise UnknownExec(f"exec {exec_id} of container {self.id} not found")
        return found

    def processes(self) -> list[Process]:
        """The init and every exec."""
        return [self.init, *self.execs.values()]

    @property
    def is_sandbox(self) -> bool:
        """CRI's sandbox (pause) container: the one that holds the pod."""
        annotations = self.spec.get("annotations") or {}
        return annotations.get(CONTAINER_TYPE_ANNOTATION) == "sandbox"

    @property
    def shares_pod_pidns(self) -> bool:
        return shares_pod_pidns(self.spec)

    def guest_spec(
        self, guest_root: str, share: Share | None, given: PodGifts | None = None
    ) -> Any:
        """The container's OCI spec as the guest must see it (Kata's grpc.Spec); its bind
        sources are shared on the way (read-only where the mount is). `given`: what the
        pod gives every container that does not set it itself. SpecError for a spec the
        guest cannot be given."""
        given = given or PodGifts()
        spec = json.loads(json.dumps(self.spec))  # deep copy
        spec.setdefault("root", {})["path"] = guest_root
        spec.pop("hooks", None)  # host hooks cannot run in the guest
        linux = spec.setdefault("linux", {})
        # The VM is the pod: its network is the VM's, not a host netns path. A namespace
        # given by path names a host process's (CRI: /proc/<sandbox pid>/ns/ipc, which is
        # QEMU's): ipc and uts are then the VM's own, shared by every container of the
        # pod; a pod-shared pid namespace is the sandbox container's in the guest
        # (CreateContainerRequest.sandbox_pidns, see shares_pod_pidns). CRI's sandbox
        # container shares the VM's IPC namespace too, so that the pod's IPC sysctls,
        # which CRI sets on it, hold in every container (the agent writes them there).
        linux["namespaces"] = [
            ns
            for ns in linux.get("namespaces") or []
            if ns.get("type") != "network"
            and not ns.get("path")
            and not (ns.get("type") == "ipc" and self.is_sandbox)
        ]
        if given.sysctls:
            linux["sysctl"] = {**given.sysctls, **(linux.get("sysctl") or {})}
        if spec.get("hostname") and not any(ns["type"] == "uts" for ns in linux["namespaces"]):
            # CRI's host-network sandbox names the node's UTS namespace by leaving it out,
            # yet sets a hostname: in the guest that needs a UTS namespace of its own
            linux["namespaces"].append({"type": "uts"})
        mounts = [
            self._shared_mount(index, entry, share)
            for index, entry in enumerate(spec.get("mounts") or [])
        ]
        for destination, source in given.files.items():
            if not any(entry.get("destination") == destination for entry in mounts):
                assert share is not None
                shared = share.share_mount(self.id, len(mounts), source)
                mounts.append(
                    {
                        "destination": destination,
                        "type": "bind",
                        "source": shared,
                        "options": ["rbind", "rw"],
                    }
                )
        spec["mounts"] = mounts
        return spec_to_kata(spec)

    def _shared_mount(self, index: int, entry: dict[str, Any], share: Share | None) -> dict:
        """A mount of the spec as the guest sees it: a bind of a host path is shared; a
        kubelet emptyDir of `medium: Memory` becomes the pod's tmpfs in the guest."""
        options = entry.get("options") or []
        is_bind = entry.get("type") == "bind" or "bind" in options or "rbind" in options
        source = entry.get("source", "")
        if not (is_bind and source.startswith("/")):
            return entry
        if not os.path.exists(source):
            raise SpecError(f"bind mount source {source} does not exist")
        memory = memory_volume(source)
        if memory is not None:
            self.storages.append(memory)
            return dict(entry, source=memory.mount_point)
        if share is None:
            raise SpecError(f"bind mount {source}: this pod shares no files with its VM")
        guest_path = share.share_mount(self.id, index, source, readonly="ro" in options)
        self.shared_sources[source] = guest_path
        _note_direct_volume(share.id, source)
        return dict(entry, source=guest_path)


def memory_volume(source: str) -> Any:
    """The guest tmpfs (an agent Storage, Kata's "ephemeral" driver) standing for a kubelet
    emptyDir of `medium: Memory`: a tmpfs that kubelet mounted at
    .../volumes/kubernetes.io~empty-dir/NAME. None for any other source. Its size is the
    host tmpfs's (kubelet's sizeLimit); the pod's memory pays for it either way."""
    match = EMPTY_DIR.search(source.rstrip("/"))
    if match is None or not os.path.ismount(source):
        return None
    from shim.mountinfo import fstype_of

    if fstype_of(source) != "tmpfs":
        return None
    from protos.kata import agent_pb2

    stat = os.statvfs(source)
    return agent_pb2.Storage(
        driver="ephemeral",
        source="tmpfs",
        fstype="tmpfs",
        options=[f"size={stat.f_blocks * stat.f_frsize}"],
        mount_point=f"{GUEST_EPHEMERAL_DIR}/{match.group(1)}",
    )


def _note_direct_volume(sandbox_id: str, source: str) -> None:
    """A bind source added with `pykata-runtime direct-volume add`: record which pod uses it
    (as Kata does), so that `direct-volume stats|resize` find the pod's monitor socket."""
    from shim import direct_volume

    try:
        if direct_volume.mount_info(source) is not None:
            direct_volume.record_sandbox(sandbox_id, source)
    except (direct_volume.DirectVolumeError, OSError) as exc:
        log.warning("direct volume not recorded", volume=source, error=str(exc))
