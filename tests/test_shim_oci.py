"""OCI JSON to Kata's protobuf Spec: names, types and errors."""

import pytest

from shim.oci import SpecError, process_to_kata, resources_to_kata, spec_to_kata

SPEC = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 24, "width": 80},
        "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 20]},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/bin"],
        "cwd": "/work",
        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": True,
        "oomScoreAdj": -5,
        "scheduler": {"policy": "SCHED_OTHER"},
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "pod",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}],
    "annotations": {"io.kubernetes.cri.container-type": "container"},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "resources": {
            "memory": {"limit": 1 << 30},
            "cpu": {"shares": 1024, "cpus": "0-1"},
            "pids": {"limit": 100},
        },
        "cgroupsPath": "/default/c1",
        "namespaces": [{"type": "pid"}, {"type": "mount"}],
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
    },
}


def test_full_spec_maps_every_known_field():
    spec = spec_to_kata(SPEC)
    assert spec.Version == "1.0.2-dev"
    p = spec.Process
    assert p.Terminal and (p.ConsoleSize.Height, p.ConsoleSize.Width) == (24, 80)
    assert (p.User.UID, p.User.GID, list(p.User.AdditionalGids)) == (1000, 100, [10, 20])
    assert list(p.Args) == ["sh", "-c", "echo hi"] and p.Cwd == "/work"
    assert list(p.Capabilities.Bounding) == ["CAP_KILL"]
    assert (p.Rlimits[0].Type, p.Rlimits[0].Hard, p.Rlimits[0].Soft) == ("RLIMIT_NOFILE", 1024, 512)
    assert p.NoNewPrivileges and p.OOMScoreAdj == -5
    assert spec.Root.Path == "rootfs" and spec.Root.Readonly
    assert spec.Mounts[0].destination == "/proc" and list(spec.Mounts[0].options) == ["nosuid"]
    assert spec.Annotations["io.kubernetes.cri.container-type"] == "container"
    linux = spec.Linux
    assert (linux.UIDMappings[0].HostID, linux.UIDMappings[0].Size) == (1000, 1)
    assert linux.Sysctl["net.ipv4.ip_forward"] == "1"
    assert linux.Resources.Memory.Limit == 1 << 30
    assert linux.Resources.CPU.Shares == 1024 and linux.Resources.CPU.Cpus == "0-1"
    assert linux.Resources.Pids.Limit == 100
    assert [n.Type for n in linux.Namespaces] == ["pid", "mount"]
    assert list(linux.MaskedPaths) == ["/proc/kcore"]


def test_exec_process_and_resources():
    process = process_to_kata({"args": ["ls"], "env": [], "cwd": "/", "user": {"uid": 0}})
    assert list(process.Args) == ["ls"]
    resources = resources_to_kata({"memory": {"limit": 2048}})
    assert resources.Memory.Limit == 2048


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"process": {"args": "sh"}}, "process.args must be a list"),
        ({"process": {"user": {"uid": "root"}}}, "process.user.uid must be an integer"),
        ({"process": {"terminal": "yes"}}, "process.terminal must be true or false"),
        ({"hostname": 5}, "hostname must be a string"),
        ({"process": []}, "spec.process must be an object"),
    ],
)
def test_bad_spec_says_where(spec, message):
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        spec_to_kata(spec)
