"""Kata's protobuf OCI spec (grpc.Spec, grpc.Process, grpc.LinuxResources) to runc's JSON.

Kata's field names are the Go struct names (`UIDMappings`, `OOMScoreAdj`); the
OCI JSON keys are their lower camel case (`uidMappings`, `oomScoreAdj`), with a
few exceptions listed in _SPECIAL. proto3 cannot tell "0" from "unset", so zero
scalars, empty lists and empty maps are left out, which is what the OCI's
`omitempty` fields mean anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

_SPECIAL = {"Version": "ociVersion", "Pagesize": "pageSize", "errnoret": "errnoRet"}
_NAMES: dict[str, str] = {}

# Not meaningful inside the VM: host hooks, host security labels, other OSes.
_DROP = frozenset({"Hooks", "Solaris", "Windows", "MountLabel", "SelinuxLabel", "ApparmorProfile"})
NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
RLIMITS = frozenset(
    "RLIMIT_" + name
    for name in (
        "AS",
        "CORE",
        "CPU",
        "DATA",
        "FSIZE",
        "LOCKS",
        "MEMLOCK",
        "MSGQUEUE",
        "NICE",
        "NOFILE",
        "NPROC",
        "RSS",
        "RTPRIO",
        "RTTIME",
        "SIGPENDING",
        "STACK",
    )
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+\Z")
# The JSON written here holds only fields of Kata's grpc.Spec, all of runtime-spec
# 1.0.2, so that is its version whatever the host's spec said (the host checked
# that version and refused fields Kata's proto cannot carry). crun 1.8.1, the
# guest's, refuses any ociVersion that does not contain "1.0" (1.2.0 from
# containerd 1.7 and 2.x: "unknown version specified").
GUEST_OCI_VERSION = "1.0.2"


def invalid(message: str) -> TTRPCError:
    return TTRPCError(Code.INVALID_ARGUMENT, message)


def json_name(name: str) -> str:
    """`UIDMappings` -> `uidMappings`, `HostID` -> `hostID`, `UID` -> `uid`."""
    known = _NAMES.get(name)
    if known is not None:
        return known
    if name in _SPECIAL:
        result = _SPECIAL[name]
    else:
        upper = 0
        while upper < len(name) and name[upper].isupper():
            upper += 1
        if upper > 1 and upper < len(name) and name[upper].islower():
            upper -= 1  # keep the capital that starts the next word
        result = name[:upper].lower() + name[upper:]
    _NAMES[name] = result
    return result


def to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as an OCI JSON object (fields left at zero are omitted)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.name in _DROP:
            continue
        key = json_name(field.name)
        # a map field's value is a Mapping; asking the descriptor (GetOptions().map_entry)
        # would import descriptor_pb2 and build options messages, ~30 ms under TCG
        if isinstance(value, Mapping):
            out[key] = {k: _value(v) for k, v in value.items()}
        elif field.is_repeated:
            out[key] = [_value(item) for item in value]
        else:
            out[key] = _value(value)
    return out


def _value(value: Any) -> Any:
    return to_json(value) if isinstance(value, Message) else value


def check_id(kind: str, value: str) -> str:
    """Container ids name directories: allow what Kata allows, nothing else."""
    if not _ID.match(value) or len(value) > 256:
        raise invalid(
            f"invalid {kind} {value!r}: want 2-256 of [A-Za-z0-9_.-], starting alphanumeric"
        )
    return value


def process_json(process: Message, *, what: str = "process") -> dict[str, Any]:
    """The OCI `process` object from a grpc.Process, checked."""
    out = to_json(process)
    if not out.get("args"):
        raise invalid(f"{what}: Args is empty (nothing to run)")
    cwd = out.get("cwd") or "/"
    if not cwd.startswith("/"):
        raise invalid(f"{what}: Cwd {cwd!r} is not an absolute path")
    out["cwd"] = cwd
    out.setdefault("user", {"uid": 0, "gid": 0})
    for rlimit in out.get("rlimits", ()):
        if rlimit.get("type") not in RLIMITS:
            raise invalid(f"{what}: unknown rlimit type {rlimit.get('type')!r}")
    return out


def container_config(
    spec: Message,
    *,
    default_root: str,
    cgroups_path: str,
    pid_namespace: str | None = None,
) -> dict[str, Any]:
    """config.json for runc from a CreateContainerRequest's OCI spec.

    - root: the spec's path when absolute, else default_root (the shared dir);
      it must be a directory;
    - network namespaces are dropped: every container of the pod shares the
      VM's network (a path in the spec names a host namespace);
    - the cgroup is ours (cgroups_path), not the host's;
    - hooks, SELinux/AppArmor labels are dropped (host paths, no LSM here);
    - a pid namespace always: pid_namespace (the pod's) when given, else a new one.
      Never the one a spec names by path, nor none: both could be the guest's root
      namespace, where the agent and the guest's own processes are.
    """
    if not spec.HasField("Process"):
        raise invalid("OCI spec has no Process")
    config = to_json(spec)
    config["ociVersion"] = GUEST_OCI_VERSION
    config["process"] = process_json(spec.Process)

    root = config.setdefault("root", {})
    path = root.get("path", "")
    if not path.startswith("/"):
        path = default_root
    if not os.path.isdir(path):
        raise invalid(f"container root {path!r} is not a directory")
    root["path"] = path

    linux = config.setdefault("linux", {})
    namespaces = []
    for namespace in linux.get("namespaces", ()):
        kind = namespace.get("type", "")
        if kind not in NAMESPACE_TYPES:
            raise invalid(f"unknown namespace type {kind!r}")
        if kind in ("network", "pid"):
            continue
        namespaces.append(namespace)
    pid = {"type": "pid", "path": pid_namespace} if pid_namespace else {"type": "pid"}
    linux["namespaces"] = [pid, *namespaces]
    linux["cgroupsPath"] = cgroups_path
    for mount in config.get("mounts", ()):
        if not mount.get("destination", "").startswith("/"):
            raise invalid(f"mount destination {mount.get('destination')!r} is not absolute")
    return config


# sysctls the kernel keeps per IPC namespace (runc's and Kubernetes' list)
IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
    "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})
UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})


def sysctl_namespace(key: str) -> str | None:
    """The namespace a sysctl belongs to ("net", "ipc", "uts"), None: not namespaced."""
    if key.startswith("net."):
        return "net"
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return "ipc"
    if key in UTS_SYSCTLS:
        return "uts"
    return None


def take_pod_sysctls(config: dict[str, Any]) -> dict[str, str]:
    """Remove the pod's sysctls from config and return them; refuse one that is not
    namespaced (it would set the whole guest, agent included), as runc does.

    The pod's sysctls are those of the namespaces the container shares with the agent,
    so with every container of the pod: the network namespace is always the VM's own
    (container_config drops the spec's; crun refuses `net.*` sysctls for a container
    without a network namespace of its own, and containerd 2.x's CRI sets
    `net.ipv4.ip_unprivileged_port_start` on every pod container), and the IPC
    namespace is the VM's unless the spec asks for one of the container's own (a CRI
    pod's containers share the VM's). The agent writes those itself; crun sets the rest
    in the container's own namespaces.
    """
    linux = config.get("linux", {})
    sysctls = linux.get("sysctl") or {}
    own = {namespace.get("type") for namespace in linux.get("namespaces") or ()}
    shared = {"net"} | ({"ipc"} if "ipc" not in own else set())
    taken = {}
    for key in list(sysctls):
        kind = sysctl_namespace(key)
        if kind is None:
            raise invalid(
                f"sysctl {key} is not namespaced: it would change the whole VM, not the "
                "pod; only net.*, IPC (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) "
                "and UTS sysctls can be set"
            )
        if kind in shared:
            taken[key] = sysctls.pop(key)
    return taken


def mount_shared_sources(config: dict[str, Any], shared_dir: str) -> None:
    """Reach every bind source under the shared folder from the agent's own mount
    namespace before the runtime makes the container's.

    virtiofs shows each host mount in the share as a submount that the guest kernel
    mounts on first use, as a new filesystem, in the mount namespace that used it. Used
    first from a container's namespace, a pod volume would be a filesystem of its own
    in each container (a unix socket bound in one refused from the other); used here
    first, every container's namespace, a copy of this one, has the same one.
    """
    prefix = shared_dir.rstrip("/") + "/"
    for mount in config.get("mounts", ()):
        source = mount.get("source", "")
        if isinstance(source, str) and source.startswith(prefix):
            # an open mounts it (stat does not: it acts as AT_NO_AUTOMOUNT); folders only
            with contextlib.suppress(OSError):
                os.close(os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def apply_sysctls(sysctls: dict[str, str], proc_sys: str = "/proc/sys") -> None:
    """Write sysctls in this process's namespaces; a bad one is an INVALID_ARGUMENT."""
    for key, value in sysctls.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_-]+)+", key):
            raise invalid(f"sysctl name {key!r} is not valid")
        path = os.path.join(proc_sys, *key.split("."))
        try:  # no O_CREAT: an unknown sysctl is an error, not a new file
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise invalid(f"cannot set sysctl {key}={value!r}: {exc.strerror}") from None


def resources_json(resources: Message) -> dict[str, Any]:
    """The OCI `linux.resources` object for `runc update -r -`."""
    return to_json(resources)
