"""A pod the Sandbox API asks for (CRI's `sandboxer = "shim"`): what its CRI config means
for the VM, the files a pause container would have given it, and how its life went."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protos.kubernetes import cri_pod_pb2
from shim.config import Config
from shim.pod import sizing
from shim.pod.container import PodGifts
from shim.pod.errors import InvalidRequest
from shim.pod.pod import PodSettings
from shim.sandbox.cgroup import sandbox_cgroup_path

POD_CONFIG_TYPE = "runtime.v1.PodSandboxConfig"
HOST_RESOLV_CONF = "/etc/resolv.conf"
MAX_RESOLV_CONF = 64 << 10


def pod_cgroup_path(cgroup_parent: str, namespace: str, sandbox_id: str) -> str:
    """The sandbox's cgroup under kubelet's pod cgroup, named as containerd names the pause
    container's (`parent:cri-containerd:id` for a systemd slice, `parent/id` otherwise)."""
    if not cgroup_parent:
        return sandbox_cgroup_path(None, default=f"/pykata/{namespace}/{sandbox_id}")
    if cgroup_parent.endswith(".slice"):
        return sandbox_cgroup_path(f"{cgroup_parent}:cri-containerd:{sandbox_id}", default="")
    return sandbox_cgroup_path(f"{cgroup_parent.rstrip('/')}/{sandbox_id}", default="")


def pod_config(options: Any) -> cri_pod_pb2.PodSandboxConfig:
    """The CRI PodSandboxConfig in CreateSandboxRequest.options (empty when absent)."""
    if options is None or not options.value:
        return cri_pod_pb2.PodSandboxConfig()
    if options.type_url.removeprefix("type.googleapis.com/") != POD_CONFIG_TYPE:
        raise InvalidRequest(
            f"CreateSandbox options are {options.type_url!r}, expected {POD_CONFIG_TYPE}"
        )
    try:
        return cri_pod_pb2.PodSandboxConfig.FromString(options.value)
    except Exception as exc:
        raise InvalidRequest(f"bad PodSandboxConfig: {exc}") from None


def shares_pid_namespace(options: Any, config: cri_pod_pb2.PodSandboxConfig) -> bool:
    """Whether the pod's containers share one pid namespace, which the agent then makes
    (no pause container holds it here).

    containerd gives every container of a pod whose pid mode is not CONTAINER the
    sandbox's pid namespace by path (POD; NODE too, the path that names the node's for
    a pause container): they share the pod's own in the guest, never the guest's.
    Without a CRI config (no options) nothing says so.
    """
    if options is None or not (options.type_url or options.value):
        return False
    return config.linux.security_context.namespace_options.pid != cri_pod_pb2.CONTAINER


def dns_lines(config: cri_pod_pb2.PodSandboxConfig) -> list[str]:
    """resolv.conf lines for the agent from the pod's DNSConfig."""
    dns = config.dns_config
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return lines


def pod_limits(request: Any, config: cri_pod_pb2.PodSandboxConfig) -> sizing.PodLimits | None:
    """The pod's totals: the sandbox annotations containerd may pass, else kubelet's
    PodSandboxConfig.linux.resources."""
    found = sizing.from_annotations(dict(request.annotations))
    if found is None and config.linux.HasField("resources"):
        found = sizing.from_cri(config.linux.resources)
    return found


def pod_labels(config: cri_pod_pb2.PodSandboxConfig) -> dict[str, str]:
    """kata-monitor's labels for the pod's metrics."""
    meta = config.metadata
    return {"cri_name": meta.name, "cri_namespace": meta.namespace, "cri_uid": meta.uid}


def write_pod_files(
    folder: Path, hostname: str, dns: list[str], host_resolv: str = HOST_RESOLV_CONF
) -> dict[str, str]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf for the pod's containers.

    containerd 2.x's shim sandboxer makes none of the files its pause-container
    sandboxer makes under CRI's sandbox dir, so the containers of such a pod
    would have no resolver: the shim writes them and binds them into each one. A pod
    without a DNS config gets a copy of the host's resolv.conf, as containerd gives
    one (none if the host has none).
    """
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    files = {"/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"}
    if hostname:
        files["/etc/hostname"] = f"{hostname}\n"
        files["/etc/hosts"] += f"127.0.1.1\t{hostname}\n"
    if dns:
        files["/etc/resolv.conf"] = "\n".join(dns) + "\n"
    else:
        try:
            with open(host_resolv, encoding="utf-8", errors="replace") as f:
                files["/etc/resolv.conf"] = f.read(MAX_RESOLV_CONF)
        except OSError:
            pass
    made = {}
    for destination, text in files.items():
        path = folder / os.path.basename(destination)
        path.write_text(text)
        made[destination] = str(path)
    return made


@dataclass(frozen=True)
class CriPod:
    """What CreateSandbox asked for: the VM's settings and what the containers get."""

    settings: PodSettings
    labels: dict[str, str]  # kata-monitor's, for the pod's metrics
    sysctls: dict[str, str]

    def gifts(self, folder: Path) -> PodGifts:
        """What each of the pod's containers gets (written under `folder`)."""
        files = write_pod_files(folder, self.settings.hostname, list(self.settings.dns))
        return PodGifts(files=files, sysctls=dict(self.sysctls))


def cri_pod(
    request: Any, namespace: str, config: Config
) -> CriPod:
    """The pod a Sandbox API CreateSandboxRequest asks for, under `config`."""
    cri = pod_config(request.options)
    settings = PodSettings(
        sandbox_id=request.sandbox_id,
        config=config,
        netns=request.netns_path or None,
        hostname=cri.hostname,
        dns=tuple(dns_lines(cri)),
        cgroup_path=pod_cgroup_path(cri.linux.cgroup_parent, namespace, request.sandbox_id),
        sandbox_pidns=shares_pid_namespace(request.options, cri),
        limits=pod_limits(request, cri),
    )
    return CriPod(settings, pod_labels(cri), dict(cri.linux.sysctls))


@dataclass
class PodLife:
    """When the Sandbox API's pod was started and stopped, and how it ended."""

    created_ns: int = 0
    exited_ns: int = 0
    exit_status: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def started(self) -> None:
        self.created_ns = time.time_ns()

    def stop(self, status: int) -> None:
        """The pod ended with this status (the first end counts)."""
        if not self.stopped.is_set():
            self.exit_status = status
            self.exited_ns = time.time_ns()
            self.stopped.set()
