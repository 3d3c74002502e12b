"""One teardown for the daemon's stop and for `delete`: from the state dir, idempotent,
and able to finish what an earlier, interrupted run began. Real bind mounts (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protos.containerd.task.v2 import shim_pb2
from shim import paths
from shim.mountinfo import mounted_under
from shim.sandbox import teardown
from shim.sandbox.mounts import MS_BIND, mount, unmount_all_under
from shim.sandbox.record import ContainerRecord, SandboxRecord
from shim.sandbox.shared_fs import SharedDir
from shim.vmm import procs

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "containerd-shim-pykata-v2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """A sandbox state dir with two containers: rootfs bind-mounted and shared."""
    state_root = tmp_path / "state"
    monkeypatch.setattr(paths, "STATE_ROOT", state_root)
    state_dir = state_root / "ns1" / "pod1"
    state_dir.mkdir(parents=True)
    record = SandboxRecord("ns1", "pod1", shim_pid=0)
    shared = SharedDir(state_dir)
    shared.setup()
    for cid in ("c1", "c2"):
        source = tmp_path / f"image-{cid}"
        (source / "bin").mkdir(parents=True)
        bundle = tmp_path / f"bundle-{cid}"
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "config.json").write_text('{"annotations": {}}')
        mount(str(source), str(bundle / "rootfs"), None, MS_BIND)
        record.containers[cid] = ContainerRecord(bundle=str(bundle), rootfs_mounted=True)
        shared.share_dir(cid, "rootfs", str(bundle / "rootfs"))
    record.save(state_dir)
    yield state_root, state_dir, record
    unmount_all_under(str(tmp_path))


def run_delete(state_root: Path, bundle: str, cid: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SHIM), "-namespace", "ns1", "-id", cid, "-bundle", bundle, "delete"],
        cwd=bundle,
        capture_output=True,
        env={**os.environ, "PYKATA_STATE_ROOT": str(state_root)},
        timeout=30,
    )


def test_release_removes_every_mount_and_the_state_dir_and_can_run_again(pod, tmp_path):
    _, state_dir, record = pod
    assert len(mounted_under(str(tmp_path))) >= 6
    lines: list[str] = []
    teardown.release(state_dir, record, lines.append)
    assert mounted_under(str(tmp_path)) == []
    assert not state_dir.exists()
    assert not state_dir.parent.exists(), "the empty namespace folder goes too"
    teardown.release(state_dir, record, lines.append)  # a second run finds nothing to do
    assert not state_dir.exists()


def test_release_finishes_a_teardown_that_stopped_half_way(pod, tmp_path):
    _, state_dir, record = pod
    teardown.forget_container(state_dir, record, "c1")  # the first run got this far
    assert "c1" not in SandboxRecord.load(state_dir).containers
    (state_dir / "sandbox.json").unlink()  # ... and its record is gone
    teardown.release(state_dir, None)
    assert mounted_under(str(state_dir)) == []
    assert not state_dir.exists()


def test_delete_after_the_daemon_died_tears_the_whole_sandbox_down(pod, tmp_path):
    state_root, state_dir, record = pod
    result = run_delete(state_root, record.containers["c1"].bundle, "c1")
    assert result.returncode == 0, result.stderr
    assert shim_pb2.DeleteResponse.FromString(result.stdout).exit_status == 137
    assert mounted_under(str(tmp_path)) == [], "both containers' rootfs and the share"
    assert not state_dir.exists()


def test_delete_while_the_daemon_lives_forgets_only_its_container(pod, tmp_path):
    state_root, state_dir, record = pod
    record.shim_pid = os.getpid()  # this test process stands for the live daemon
    record.shim_started = procs.start_time(os.getpid()) or 0
    record.save(state_dir)
    result = run_delete(state_root, record.containers["c1"].bundle, "c1")
    assert result.returncode == 0, result.stderr
    left = SandboxRecord.load(state_dir)
    assert list(left.containers) == ["c2"]
    assert mounted_under(record.containers["c1"].bundle) == []
    assert not (state_dir / "mounts" / "c1").exists()
    assert mounted_under(record.containers["c2"].bundle), "c2 keeps its rootfs"
    assert mounted_under(str(state_dir / "mounts" / "c2")), "and its share"


# --------------------------------------------------------------------------- hostile paths
@pytest.fixture
def victim(tmp_path):
    """A directory outside the state root, with a file and a bind mount, that must survive."""
    victim = tmp_path / "victim"
    (victim / "mnt").mkdir(parents=True)
    (victim / "precious").write_text("keep me")
    source = tmp_path / "victim-source"
    source.mkdir()
    mount(str(source), str(victim / "mnt"), None, MS_BIND)
    yield victim
    unmount_all_under(str(victim))


def assert_untouched(victim: Path) -> None:
    assert (victim / "precious").read_text() == "keep me"
    assert mounted_under(str(victim / "mnt")), "the victim's mount stays"


def hostile_bundle(tmp_path: Path, group: str) -> Path:
    bundle = tmp_path / "bundle-hostile"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(
        json.dumps({"annotations": {"io.containerd.runc.v2.group": group}})
    )
    return bundle


@pytest.mark.parametrize("group", ["../../victim", "ABSOLUTE", "..", "ns1/../../victim"])
def test_delete_never_turns_a_group_annotation_into_a_path(pod, tmp_path, victim, group):
    state_root, state_dir, _ = pod
    group = str(victim) if group == "ABSOLUTE" else group
    bundle = hostile_bundle(tmp_path, group)
    result = run_delete(state_root, str(bundle), "hostile")
    assert result.returncode == 0, result.stderr
    assert b"ignoring the bundle's sandbox annotation" in result.stderr
    assert_untouched(victim)
    assert (state_dir / "sandbox.json").exists(), "another pod's sandbox is not the hostile one"


def test_delete_does_not_follow_a_symlink_planted_in_the_state_root(pod, tmp_path, victim):
    state_root, _, _ = pod
    link = state_root / "ns1" / "hostile"
    link.symlink_to(victim)
    (victim / "sandbox.json").write_text(json.dumps({"containers": {"hostile": {}}}))
    bundle = hostile_bundle(tmp_path, "hostile")
    result = run_delete(state_root, str(bundle), "hostile")
    assert result.returncode == 0, result.stderr
    assert_untouched(victim)
    assert link.is_symlink()


@pytest.mark.parametrize("where", ["outside", "symlink", "too-deep", "bad-name"])
def test_teardown_refuses_anything_but_a_sandbox_directory(pod, tmp_path, victim, where):
    state_root, _, _ = pod
    target = {
        "outside": victim,
        "symlink": state_root / "ns1" / "linked",
        "too-deep": state_root / "ns1" / "pod1" / "mounts",
        "bad-name": state_root / "ns1" / "bad name",
    }[where]
    if where == "symlink":
        target.symlink_to(victim)
    if where == "bad-name":
        target.mkdir()
    with pytest.raises(paths.InvalidIdentifier):
        teardown.release(target, None)
    with pytest.raises(paths.InvalidIdentifier):
        teardown.forget_container(target, None, "c1")
    assert_untouched(victim)


@pytest.mark.parametrize("value", ["../x", "/etc", "a/b", "", "x" * 77, "a..b", 7])
def test_group_annotations_must_be_identifiers(value):
    spec = {"annotations": {"io.kubernetes.cri.sandbox-id": value}}
    if value == "":
        assert paths.group_of(spec, "c1") == "c1"  # no annotation: the container is its pod
        return
    with pytest.raises(paths.InvalidIdentifier):
        paths.group_of(spec, "c1")


def test_group_of_a_valid_annotation_and_of_odd_specs():
    assert paths.group_of({"annotations": {"io.containerd.runc.v2.group": "pod-1"}}, "c") == "pod-1"
    assert paths.group_of([], "c") == "c"
    assert paths.group_of({"annotations": ["x"]}, "c") == "c"
