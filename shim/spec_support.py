"""Which runtime-spec versions and fields the guest honours: 1.0.x to 1.2.x, checked.

The guest receives a container's spec as Kata's protobuf `grpc.Spec`, whose
fields are those of runtime-spec 1.0. containerd 1.6 writes `1.0.2-dev`
specs, 1.7 `1.1.0`/`1.2.0`, 2.x `1.2.x`; their default specs hold nothing newer
than 1.0.2, but a spec (a user's, a CRI option) may. So every field of
runtime-spec 1.0.2-1.2.1 that Kata's proto cannot carry is listed here with the
value that means "not used": a spec that gives such a field another value is
refused with a message naming the field, instead of the field being dropped
on the way to the guest. Properties the spec does not define are ignored, as
the spec's extensibility rule asks of runtimes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class SpecError(ValueError):
    """The OCI spec holds something that cannot be carried to the guest."""

SUPPORTED_MAJOR = 1
NEWEST_MINOR = 2

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def _absent_or(*defaults: Any) -> Callable[[Any], bool]:
    """A rule: the field is fine when empty or equal to one of `defaults`."""

    def ok(value: Any) -> bool:
        return value in (None, "", 0, False, [], {}) or value in defaults

    return ok


_UNUSED = _absent_or()


def _default_scheduler(value: Any) -> bool:
    """SCHED_OTHER at nice 0 with no flags is what every process has anyway."""
    if not value:
        return True
    if not isinstance(value, dict):
        return False
    rest = {k: v for k, v in value.items() if k != "policy" and v not in (None, 0, [], "")}
    return value.get("policy", "SCHED_OTHER") == "SCHED_OTHER" and not rest

# EPERM: what crun and runc answer for SCMP_ACT_ERRNO when no errno is given,
# and what containerd's default seccomp profile asks for.
_EPERM = 1
_DEFAULT_UMASK = 0o022

# Path (dotted JSON keys; [] for list items) -> (spec version that added it, rule)
KNOWN_UNCARRIED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "domainname": ("1.1.0", _UNUSED),
    "process.scheduler": ("1.1.0", _default_scheduler),
    "process.ioPriority": ("1.1.0", _UNUSED),
    "process.execCPUAffinity": ("1.2.0", _UNUSED),
    "process.user.umask": ("1.0.2", _absent_or(_DEFAULT_UMASK)),
    "process.commandLine": ("1.0.2 (Windows)", _UNUSED),
    "mounts[].uidMappings": ("1.1.0", _UNUSED),
    "mounts[].gidMappings": ("1.1.0", _UNUSED),
    "linux.personality": ("1.0.2", _UNUSED),
    "linux.timeOffsets": ("1.1.0", _UNUSED),
    "linux.netDevices": ("1.2.0", _UNUSED),
    "linux.memoryPolicy": ("1.2.1", _UNUSED),
    "linux.seccomp.defaultErrnoRet": ("1.0.2", _absent_or(_EPERM)),
    "linux.seccomp.listenerPath": ("1.0.2", _UNUSED),
    "linux.seccomp.listenerMetadata": ("1.0.2", _UNUSED),
    "linux.intelRdt.closID": ("1.0.2", _UNUSED),
    "linux.intelRdt.memBwSchema": ("1.0.2", _UNUSED),
    "linux.intelRdt.enableCMT": ("1.1.0", _UNUSED),
    "linux.intelRdt.enableMBM": ("1.1.0", _UNUSED),
    "linux.resources.unified": ("1.1.0", _UNUSED),
    "linux.resources.rdma": ("1.0.2", _UNUSED),
    "linux.resources.memory.useHierarchy": ("1.0.2", _absent_or(True)),
    "linux.resources.memory.checkBeforeUpdate": ("1.1.0", _UNUSED),
    "linux.resources.cpu.idle": ("1.1.0", _UNUSED),
    "linux.resources.cpu.burst": ("1.1.0", _UNUSED),
    "linux.resources.hugepageLimits[].rsvd": ("1.1.0", _UNUSED),
    "vm": ("1.0.2 (VM-based runtimes)", _UNUSED),
}
_LISTS = ("mounts", "hugepageLimits")


def check_version(spec: dict[str, Any]) -> str:
    """The spec's ociVersion, if this runtime can run it; raises SpecError otherwise."""
    version = spec.get("ociVersion") or "1.0.0"
    if not isinstance(version, str):
        raise SpecError(f"ociVersion must be a string, not {version!r}")
    match = _VERSION.match(version)
    if match is None:
        raise SpecError(f"ociVersion {version!r} is not a SemVer version (like 1.2.0)")
    if int(match.group(1)) != SUPPORTED_MAJOR:
        raise SpecError(
            f"runtime-spec {version} is not supported: pykata runs runtime-spec "
            f"{SUPPORTED_MAJOR}.0 to {SUPPORTED_MAJOR}.{NEWEST_MINOR}"
        )
    return version


def uncarried_fields(document: dict[str, Any], prefix: str = "") -> list[str]:
    """Known fields of `document` (under `prefix`) set to a value the guest cannot honour."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            rule = KNOWN_UNCARRIED.get(here)
            if rule is not None:
                if not rule[1](value):
                    found.append(f"{here} (runtime-spec {rule[0]})")
                continue
            if key in ("annotations", "sysctl"):
                continue  # free-form maps
            if isinstance(value, list) and key in _LISTS:
                for item in value:
                    walk(item, f"{here}[]")
            elif isinstance(value, dict):
                walk(value, here)

    walk(document, prefix)
    return found


def _refuse(found: list[str], what: str) -> None:
    if found:
        raise SpecError(
            f"{what} sets {', '.join(found)}, which pykata's guest cannot apply yet; "
            "remove it from the spec (or leave it at its default)"
        )


def check_spec(spec: dict[str, Any]) -> None:
    """Refuse a container spec the guest could only run by silently dropping part of it."""
    check_version(spec)
    _refuse(uncarried_fields(spec), "the OCI spec")


def check_process(process: dict[str, Any]) -> None:
    """The same for an exec's process object."""
    _refuse(uncarried_fields(process, "process"), "the exec's process")


def check_resources(resources: dict[str, Any]) -> None:
    """The same for an Update's linux.resources."""
    _refuse(uncarried_fields(resources, "linux.resources"), "the resources update")
