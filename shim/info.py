"""`containerd-shim-pykata-v2 -info`: what this runtime is and supports, for containerd 2.x.

containerd 2.x runs the binary with `-info` (options, or nothing, on stdin) and
reads a `containerd.types.RuntimeInfo` from stdout: name (1), version (2:
RuntimeVersion{version=1, revision=2}), the options it was given (3, an Any),
the runtime-spec features document (4, an Any whose value is the JSON of
features.md) and annotations (5, a string map). CRI reads the features to
decide, e.g., whether read-only mounts may be made recursive (`rro`) and
whether idmapped mounts can be used. Encoded by hand, like `delete`'s reply:
importing protobuf would cost this short-lived process more than all the rest.
"""

from __future__ import annotations

import json
import sys

from shim.handoff import RUNTIME_NAME, VERSION, read_stdin
from shim.wire import bytes_field

FEATURES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
ANNOTATIONS = {"io.containerd.pykata.v2.version": VERSION}

# Mount options the guest's mount code and crun understand (features.md: mountOptions).
_MOUNT_OPTIONS = [
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
    "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
    "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
    "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync",
    "unbindable",
]
_NAMESPACES = ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]
_SECCOMP_ACTIONS = [
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
]
_SECCOMP_OPERATORS = [
    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE",
]


def features() -> dict:
    """runtime-spec features.md for the guest as the host hands specs to it.

    Hooks run nowhere (host hooks cannot run in the guest; the shim drops
    them); LSMs and Intel RDT are not in the guest; idmapped mounts are not
    carried (shim.spec_support refuses them).
    """
    from shim.spec_support import NEWEST_MINOR, SUPPORTED_MAJOR

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": f"{SUPPORTED_MAJOR}.{NEWEST_MINOR}.1",
        "hooks": [],
        "mountOptions": _MOUNT_OPTIONS,
        "linux": {
            "namespaces": _NAMESPACES,
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": {"enabled": True, "actions": _SECCOMP_ACTIONS,
                        "operators": _SECCOMP_OPERATORS, "archs": ["SCMP_ARCH_X86_64"]},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": ANNOTATIONS,
    }


def _any(type_url: str, value: bytes) -> bytes:
    return bytes_field(1, type_url.encode()) + bytes_field(2, value)


def runtime_info(options: bytes = b"", revision: str = "") -> bytes:
    """A serialized containerd.types.RuntimeInfo; `options` is the Any given on stdin."""
    version = bytes_field(1, VERSION.encode())
    if revision:
        version += bytes_field(2, revision.encode())
    out = bytes_field(1, RUNTIME_NAME.encode()) + bytes_field(2, version)
    if options:
        out += bytes_field(3, options)
    document = json.dumps(features(), separators=(",", ":"), sort_keys=True).encode()
    out += bytes_field(4, _any(FEATURES_TYPE_URL, document))
    for key, value in sorted(ANNOTATIONS.items()):
        out += bytes_field(5, bytes_field(1, key.encode()) + bytes_field(2, value.encode()))
    return out


def info() -> int:
    """Run `-info`: write RuntimeInfo to stdout."""
    sys.stdout.buffer.write(runtime_info(read_stdin()))
    sys.stdout.flush()
    return 0
