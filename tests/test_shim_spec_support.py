"""runtime-spec 1.0 to 1.2: the versions accepted, the fields refused rather than dropped."""

from __future__ import annotations

import copy

import pytest

from shim.oci import SpecError, process_to_kata, resources_to_kata, spec_to_kata
from shim.spec_support import KNOWN_UNCARRIED, check_version, uncarried_fields

# The shape of `ctr oci spec` from containerd 2.1 (runtime-spec 1.2.1), trimmed.
CTR_21_SPEC = {
    "ociVersion": "1.2.1",
    "process": {
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                         "permitted": ["CAP_CHOWN"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
        "args": ["sh"],
    },
    "root": {"path": "rootfs"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"]}],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "cgroupsPath": "/default/c1",
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                       {"type": "network"}],
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
    },
}


@pytest.mark.parametrize("version", ["1.0.0", "1.0.2-dev", "1.1.0-rc.1", "1.1.0", "1.2.0",
                                     "1.2.1", "1.3.0"])
def test_every_1x_version_is_accepted(version):
    assert check_version({"ociVersion": version}) == version


@pytest.mark.parametrize(("version", "words"), [
    ("2.0.0", "runtime-spec 2.0.0 is not supported"),
    ("0.9.0", "runtime-spec 0.9.0 is not supported"),
    ("latest", "is not a SemVer version"),
    (12, "must be a string"),
])
def test_other_versions_are_refused_with_a_reason(version, words):
    with pytest.raises(SpecError, match=words):
        check_version({"ociVersion": version})


def test_the_default_specs_of_containerd_17_and_2x_pass():
    for version in ("1.1.0-rc.1", "1.2.0", "1.2.1"):
        spec = dict(copy.deepcopy(CTR_21_SPEC), ociVersion=version)
        assert spec_to_kata(spec).Version == version


# A value for each known field that Kata's proto cannot carry, and its harmless default.
SET_VALUES = {
    "domainname": ("example.test", ""),
    "process.scheduler": ({"policy": "SCHED_BATCH"}, {"policy": "SCHED_OTHER", "nice": 0}),
    "process.ioPriority": ({"class": "IOPRIO_CLASS_IDLE", "priority": 0}, None),
    "process.execCPUAffinity": ({"initial": "0"}, None),
    "process.user.umask": (0o077, 0o022),
    "process.commandLine": ("cmd.exe", ""),
    "mounts[].uidMappings": ([{"containerID": 0, "hostID": 1000, "size": 1}], []),
    "mounts[].gidMappings": ([{"containerID": 0, "hostID": 1000, "size": 1}], []),
    "linux.personality": ({"domain": "LINUX32"}, None),
    "linux.timeOffsets": ({"monotonic": {"secs": 10}}, {}),
    "linux.netDevices": ({"eth1": {"name": "eth1"}}, {}),
    "linux.memoryPolicy": ({"mode": "MPOL_BIND", "nodes": "0"}, None),
    "linux.seccomp.defaultErrnoRet": (38, 1),
    "linux.seccomp.listenerPath": ("/run/seccomp.sock", ""),
    "linux.seccomp.listenerMetadata": ("x", ""),
    "linux.intelRdt.closID": ("gold", ""),
    "linux.intelRdt.memBwSchema": ("MB:0=20", ""),
    "linux.intelRdt.enableCMT": (True, False),
    "linux.intelRdt.enableMBM": (True, False),
    "linux.resources.unified": ({"memory.high": "1G"}, {}),
    "linux.resources.rdma": ({"mlx5_0": {"hcaHandles": 3}}, {}),
    "linux.resources.memory.useHierarchy": (None, True),
    "linux.resources.memory.checkBeforeUpdate": (True, False),
    "linux.resources.cpu.idle": (1, 0),
    "linux.resources.cpu.burst": (1000, 0),
    "linux.resources.hugepageLimits[].rsvd": (True, False),
    "vm": ({"kernel": {"path": "/vmlinuz"}}, None),
}


def _with(path: str, value):
    spec = copy.deepcopy(CTR_21_SPEC)
    keys = path.split(".")
    node = spec
    for key in keys[:-1]:
        if key.endswith("[]"):
            name = key[:-2]
            items = node.setdefault(name, [{"pageSize": "2MB", "limit": 0}]
                                    if name == "hugepageLimits" else [])
            node = items[0]
        else:
            node = node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


def test_every_known_field_has_a_case_here():
    assert set(SET_VALUES) == set(KNOWN_UNCARRIED)


@pytest.mark.parametrize("path", sorted(SET_VALUES))
def test_a_field_the_guest_cannot_apply_is_refused_by_name(path):
    value, default = SET_VALUES[path]
    if value is not None:  # useHierarchy: every value means what the guest does anyway
        with pytest.raises(SpecError) as caught:
            spec_to_kata(_with(path, value))
        message = str(caught.value)
        assert path in message and "runtime-spec 1." in message and "remove it" in message
    if default is not None:
        assert uncarried_fields(_with(path, default)) == []
        spec_to_kata(_with(path, default))


def test_properties_the_spec_does_not_define_are_ignored():
    spec = copy.deepcopy(CTR_21_SPEC)
    spec["process"]["io.example.extension"] = {"anything": 1}
    spec["linux"]["futureThing"] = [1, 2]
    spec["annotations"] = {"domainname": "not a field"}
    assert uncarried_fields(spec) == []
    spec_to_kata(spec)


def test_exec_process_and_resource_updates_are_checked_too():
    with pytest.raises(SpecError, match=r"process\.ioPriority"):
        process_to_kata({"args": ["true"], "cwd": "/",
                         "ioPriority": {"class": "IOPRIO_CLASS_RT", "priority": 1}})
    with pytest.raises(SpecError, match=r"linux\.resources\.unified"):
        resources_to_kata({"unified": {"memory.high": "1G"}})
    assert resources_to_kata({"memory": {"limit": 1 << 20}}).Memory.Limit == 1 << 20
