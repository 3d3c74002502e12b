"""A read-only volume is read-only where virtiofsd sees it (the sandbox's shared/), with its
submounts, on every kernel path; a share that cannot be made so is refused and undone.
Real bind mounts (root)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pykata_common.contract import GUEST_SHARED_DIR
from shim.mountinfo import mounted_under, writable_under
from shim.sandbox import shared_fs
from shim.sandbox.mounts import MS_BIND, MountError, mount, unmount_all_under
from shim.sandbox.shared_fs import SharedDir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@pytest.fixture
def share(tmp_path):
    """A sandbox's shared folder, and a volume whose subfolder is a mount of its own."""
    shared = SharedDir(tmp_path / "state")
    shared.setup()
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "file").write_text("host data")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "secret").write_text("inner data")
    mount(str(inner), str(volume / "sub"), None, MS_BIND)
    yield shared, volume
    unmount_all_under(str(tmp_path))


def assert_read_only_everywhere(shared: SharedDir, volume: Path) -> None:
    exported = shared.shared / "c1" / "vol"
    assert (exported / "file").read_text() == "host data"
    assert (exported / "sub" / "secret").read_text() == "inner data", "submounts are shared"
    assert len(mounted_under(str(exported))) == 2
    assert writable_under(str(exported)) == [], "what virtiofsd exports"
    assert writable_under(str(shared.mounts / "c1" / "vol")) == []
    for path in (exported / "file", exported / "sub" / "secret", exported / "new"):
        with pytest.raises(OSError) as refused:
            path.write_text("from the guest")
        assert refused.value.errno == errno.EROFS
    assert (volume / "file").read_text() == "host data"
    (volume / "sub" / "secret").write_text("the host's own mount stays writable")


def test_a_read_only_share_is_read_only_with_its_submounts(share):
    shared, volume = share
    guest = shared.share_dir("c1", "vol", str(volume), readonly=True)
    assert guest == f"{GUEST_SHARED_DIR}/c1/vol"
    assert_read_only_everywhere(shared, volume)


def test_without_mount_setattr_each_copy_is_remounted(share, monkeypatch):
    def enosys(source: str, target: str) -> None:
        raise MountError(errno.ENOSYS, "open_tree: Function not implemented")

    monkeypatch.setattr(shared_fs, "bind_readonly", enosys)
    shared, volume = share
    shared.share_dir("c1", "vol", str(volume), readonly=True)
    assert_read_only_everywhere(shared, volume)


def test_a_share_that_stays_writable_is_refused_and_undone(share, monkeypatch):
    def enosys(source: str, target: str) -> None:
        raise MountError(errno.ENOSYS, "open_tree: Function not implemented")

    monkeypatch.setattr(shared_fs, "bind_readonly", enosys)
    monkeypatch.setattr(shared_fs, "remount_readonly", lambda prefix: None)
    shared, volume = share
    with pytest.raises(MountError, match=r"cannot share .*volume read-only: still writable"):
        shared.share_dir("c1", "vol", str(volume), readonly=True)
    assert mounted_under(str(shared.mounts / "c1")) == []
    assert mounted_under(str(shared.shared / "c1")) == []


def test_a_writable_share_stays_writable(share):
    shared, volume = share
    shared.share_dir("c1", "vol", str(volume))
    (shared.shared / "c1" / "vol" / "file").write_text("written through the share")
    assert (volume / "file").read_text() == "written through the share"


def test_a_share_is_named_with_safe_characters_only(tmp_path, monkeypatch):
    """The name comes from the spec's bind source: no control characters, backslashes or
    spaces reach the state dir and mountinfo, and it stays short."""
    from shim import paths
    from shim.config import Config
    from shim.sandbox.sandbox import Sandbox

    monkeypatch.setattr(paths, "STATE_ROOT", tmp_path)
    sandbox = Sandbox("ns", "pod", Config())
    named = []
    monkeypatch.setattr(
        sandbox.shared, "share_dir", lambda cid, name, source, readonly: named.append(name)
    )
    for source in ("/v/a b\tc\\d\ne", "/v/" + "x" * 300, "/v/.."):
        sandbox.share_mount("c1", 0, source)
    assert named == ["mount-0-a_b_c_d_e", "mount-0-" + "x" * 64, "mount-0-.."]
    sandbox.share_mount("c1", 0, "/")  # a folder: the pod's, named by a digest + its base
    assert named[-1].endswith("-root") and set(named[-1][:-5]) <= set("0123456789abcdef")


def test_a_folder_is_shared_once_for_the_whole_pod(tmp_path, monkeypatch):
    """Two containers mounting one emptyDir see one filesystem in the guest (one share,
    one guest path); read-only and writable mounts of it are two shares; files are each
    container's own."""
    from shim import paths
    from shim.config import Config
    from shim.sandbox.sandbox import POD_VOLUMES, Sandbox

    monkeypatch.setattr(paths, "STATE_ROOT", tmp_path)
    sandbox = Sandbox("ns", "pod", Config())
    shares = []

    def share_dir(cid, name, source, readonly):
        shares.append((cid, name, readonly))
        return f"/guest/{cid}/{name}"

    monkeypatch.setattr(sandbox.shared, "share_dir", share_dir)
    volume = tmp_path / "pods" / "uid" / "volumes" / "kubernetes.io~empty-dir" / "cache"
    volume.mkdir(parents=True)
    termination = tmp_path / "termination-log"
    termination.touch()
    first = sandbox.share_mount("one", 3, str(volume))
    second = sandbox.share_mount("two", 5, str(volume) + "/")
    readonly = sandbox.share_mount("two", 6, str(volume), readonly=True)
    assert first == second != readonly
    assert [(cid, ro) for cid, _, ro in shares] == [(POD_VOLUMES, False), (POD_VOLUMES, True)]
    assert shares[0][1].endswith("-cache")
    sandbox.share_mount("one", 4, str(termination))
    sandbox.share_mount("two", 7, str(termination))
    assert shares[2:] == [("one", "mount-4-termination-log", False),
                          ("two", "mount-7-termination-log", False)]


def test_a_root_given_as_a_folder_is_shared_as_it_is(
    tmp_path, monkeypatch
):
    """Docker's graph drivers and `ctr run --rootfs` give root.path absolute, no mounts."""
    from shim import paths
    from shim.config import Config
    from shim.sandbox.sandbox import Sandbox
    from shim.spec_support import SpecError

    monkeypatch.setattr(paths, "STATE_ROOT", tmp_path / "state")
    sandbox = Sandbox("ns", "pod", Config())
    sandbox.state_dir.mkdir(parents=True)
    shares = []
    monkeypatch.setattr(sandbox.shared, "share_dir",
                        lambda cid, name, source: shares.append(source))
    root = tmp_path / "graph" / "merged"
    root.mkdir(parents=True)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    sandbox.add_container("c1", str(bundle), [], str(root))
    (bundle / "rootfs").mkdir()  # containerd's: relative to the bundle
    sandbox.add_container("c2", str(bundle), [], "rootfs")
    assert shares == [str(root), str(bundle / "rootfs")]
    with pytest.raises(SpecError, match="not a folder"):
        sandbox.add_container("c3", str(bundle), [], str(tmp_path / "missing"))
