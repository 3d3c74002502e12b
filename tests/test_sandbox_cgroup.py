"""The pod's cgroup: paths from the spec (validated), the systemd driver's names, joining
every hierarchy (fake trees for v1 cpuset and v2, the real cgroupfs as root), leaving and
removing it, and teardown from the record."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from shim.paths import CGROUP_FILE
from shim.sandbox.cgroup import (
    CgroupError,
    Hierarchy,
    PodCgroup,
    hierarchies,
    remove_recorded,
    sandbox_cgroup_path,
    systemd_path,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/default/c1", "/default/c1"),
        ("kubepods/pod1/abc", "/kubepods/pod1/abc"),
        ("/a//b/./c/", "/a/b/c"),
        (None, "/pykata/ns/pod"),
        ("", "/pykata/ns/pod"),
        (
            "kubepods-burstable-pod12.slice:cri-containerd:abc",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice/"
            "cri-containerd-abc.scope",
        ),
        ("system.slice:docker:1f", "/system.slice/docker-1f.scope"),
    ],
)
def test_cgroup_paths(given, expected):
    assert sandbox_cgroup_path(given, default="/pykata/ns/pod") == expected


@pytest.mark.parametrize(
    "hostile",
    ["/", "..", "/a/../../etc", "../x", "a\0b", "a\nb", "x" * 5000, 7, "bad:prefix:name"],
)
def test_hostile_cgroup_paths_are_refused(hostile):
    with pytest.raises(CgroupError):
        sandbox_cgroup_path(hostile, default="/pykata/ns/pod")


def test_systemd_root_slice():
    assert systemd_path("-.slice:p:n") == "/p-n.scope"
    assert systemd_path(":p:n") == "/p-n.scope"


@pytest.fixture
def fake_tree(tmp_path):
    """A v1 cpuset hierarchy (parent CPUs 0-1) and a v2 one offering cpu, memory, pids."""
    cpuset, unified = tmp_path / "cpuset", tmp_path / "unified"
    cpuset.mkdir()
    (cpuset / "cpuset.cpus").write_text("0-1\n")
    (cpuset / "cpuset.mems").write_text("0\n")
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpu io memory pids\n")
    (unified / "cgroup.subtree_control").write_text("cpu\n")
    return [Hierarchy(str(cpuset), 1, ("cpuset",)), Hierarchy(str(unified), 2)]


def test_join_makes_the_pod_cgroup_in_every_hierarchy(fake_tree, tmp_path):
    pid = os.getpid()
    group = PodCgroup.join("/kubepods/pod1/sandbox", pid, fake_tree)
    cpuset = tmp_path / "cpuset" / "kubepods" / "pod1" / "sandbox"
    unified = tmp_path / "unified" / "kubepods" / "pod1" / "sandbox"
    assert (cpuset / "cgroup.procs").read_text() == f"{pid}\n"
    assert (unified / "cgroup.procs").read_text() == f"{pid}\n"
    assert (cpuset / "cpuset.cpus").read_text() == "0-1\n", "a new cpuset gets its parent's"
    assert (tmp_path / "unified" / "cgroup.subtree_control").read_text() == "+io +memory +pids"
    assert group.made == [str(cpuset), str(unified)], "only the pod's own folder is ours"
    assert group.joined == [str(cpuset), str(unified)]


def test_join_refuses_a_symlink_on_the_way(fake_tree, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cpuset" / "kubepods").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CgroupError, match="not a cgroup"):
        PodCgroup.join("/kubepods/pod1/sandbox", os.getpid(), fake_tree)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_join_without_any_hierarchy_says_so():
    with pytest.raises(CgroupError, match="no cgroup hierarchy is mounted"):
        PodCgroup.join("/p/s", os.getpid(), [])


def test_a_record_names_only_folders_in_a_mounted_hierarchy(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    PodCgroup("/p/s", made=[str(victim)]).save(tmp_path)
    assert PodCgroup.load(tmp_path).made == []
    assert remove_recorded(tmp_path) == [] and victim.is_dir()
    (tmp_path / CGROUP_FILE).write_text("{not json")
    assert PodCgroup.load(tmp_path) is None


def _writable_cgroupfs() -> bool:
    found = hierarchies()
    return (
        os.geteuid() == 0 and bool(found) and all(os.access(h.mountpoint, os.W_OK) for h in found)
    )


@pytest.mark.skipif(not _writable_cgroupfs(), reason="needs root and a writable cgroupfs")
def test_a_real_process_joins_leaves_and_the_cgroup_goes(tmp_path):
    path = f"/pykata-test-{uuid.uuid4().hex[:8]}/pod"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        group = PodCgroup.join(path, sleeper.pid)
        group.save(tmp_path)
        lines = Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines()
        assert lines and all(line.endswith(f":{path}") for line in lines), lines
        assert remove_recorded(tmp_path) == [], "in use: nothing removed, the record stays"
        assert (tmp_path / CGROUP_FILE).exists()
        group.leave(sleeper.pid)
        assert not any(
            line.endswith(f":{path}")
            for line in Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines()
        )
        removed = remove_recorded(tmp_path)
        assert len(removed) == len(group.made) == len(hierarchies())
        assert not (tmp_path / CGROUP_FILE).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for h in hierarchies():
            for folder in (
                Path(h.mountpoint) / path.lstrip("/"),
                Path(h.mountpoint) / path.lstrip("/").split("/")[0],
            ):
                if folder.is_dir():
                    os.rmdir(folder)
