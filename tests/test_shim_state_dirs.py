"""State directories are 0700 whatever the umask, and an older version's 0755 is tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import direct_volume, paths
from shim.vmm import template
from shim.vmm.hostcaps import HostCapsCache


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "pykata"
    monkeypatch.setattr(paths, "STATE_ROOT", root)
    return root


@pytest.fixture(params=[0o022, 0o000, 0o277], ids=lambda u: f"umask-{u:03o}")
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_a_sandbox_dir_and_its_parents_are_made_0700(root, umask):
    above = mode(root.parent)
    state = paths.private_dir(root / "k8s.io" / "pod1")
    assert state == root / "k8s.io" / "pod1" and state.is_dir()
    assert [mode(d) for d in (root, root / "k8s.io", state)] == [0o700] * 3
    assert mode(root.parent) == above  # above the root: left as it is


def test_an_older_versions_wide_dirs_are_tightened(root):
    state = root / "k8s.io" / "pod1"
    state.mkdir(parents=True)
    for d in (root, root / "k8s.io", state):
        d.chmod(0o755)
    (state / "sandbox.json").write_text("{}")
    paths.private_dir(state)
    assert [mode(d) for d in (root, root / "k8s.io", state)] == [0o700] * 3
    assert (state / "sandbox.json").read_text() == "{}"
    paths.private_dir(root / "default" / "pod2")  # a sibling: the namespace dir too
    assert mode(root / "default") == 0o700


def test_a_symlink_below_the_root_is_refused(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    root.mkdir(parents=True)
    (root / "k8s.io").symlink_to(elsewhere)
    with pytest.raises(OSError):
        paths.private_dir(root / "k8s.io" / "pod1")
    assert mode(elsewhere) == 0o755 and not (elsewhere / "pod1").exists()


def test_a_root_that_is_a_link_is_followed(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setattr(paths, "STATE_ROOT", link)
    paths.private_dir(link / "ns" / "sb")
    assert mode(real) == 0o700 and mode(real / "ns" / "sb") == 0o700


def test_a_sticky_shared_directory_is_never_narrowed(tmp_path, monkeypatch):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(paths, "STATE_ROOT", shared)
    paths.private_dir(shared / "ns")
    assert mode(shared) == 0o1777 and mode(shared / "ns") == 0o700


def test_outside_the_state_root_only_the_dir_itself_is_private(root, tmp_path):
    build = tmp_path / "factory" / ".template.build-1"
    paths.private_dir(build)
    assert mode(build) == 0o700
    assert not root.exists()
    with pytest.raises(ValueError):
        paths.private_dir(tmp_path / "a", top=tmp_path / "b")


def test_a_file_in_the_way_is_an_error(root):
    root.mkdir(parents=True)
    (root / "k8s.io").write_text("")
    with pytest.raises(NotADirectoryError):
        paths.private_dir(root / "k8s.io")


def test_direct_volumes_host_caps_and_the_template_dir_are_private(root, tmp_path, umask):
    volumes = tmp_path / "volumes"
    target = direct_volume.add("/data/vol", '{"device": "/dev/sdb", "fstype": "ext4"}', volumes)
    assert mode(volumes) == mode(target.parent) == 0o700
    HostCapsCache(root).put("k", 1)
    assert mode(root) == 0o700
    factory = tmp_path / "factory"
    factory.mkdir(mode=0o755)
    factory.chmod(0o755)
    os.close(template.lock(template.TemplateDir(factory / "template"), exclusive=True))
    assert mode(factory) == 0o700
