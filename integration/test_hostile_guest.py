"""Root in the guest, outside every container (here: the debug console, standing for a
guest kernel exploit or a compromised agent), against what the host shares with the VM:
a read-only volume and its submount stay unchanged on the host, planted symlinks do not
lead out of the share, and the host's files cannot be named from the guest."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from pykata_common.contract import GUEST_SHARED_DIR
from shim.sandbox.mounts import MS_BIND, mount, unmount_all_under
from shim.sandbox.sandbox import POD_VOLUMES

pytestmark = pytest.mark.integration
MARK = "host-data-" + uuid.uuid4().hex[:8]


def guest_root(cid: str, script: str) -> subprocess.CompletedProcess:
    """`sh -c script` as root in the guest, outside the container (the debug console); the
    script's lines become one (the console takes one line)."""
    line = "; ".join(part.strip() for part in script.strip().splitlines())
    return subprocess.run([sys.executable, "-m", "shim.admin", "exec", cid, "sh", "-c", line],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pod(containerd, busybox_image, tmp_path_factory):
    """A pod with a read-only volume (holding a submount) and a writable one."""
    ensure_shim_on_path()
    ensure_guest_assets()
    cd = containerd
    work = tmp_path_factory.mktemp("hostile")
    ro, rw, inner = work / "ro-volume", work / "rw-volume", work / "inner"
    for folder in (ro / "sub", rw, inner):
        folder.mkdir(parents=True)
    (ro / "file").write_text(MARK)
    (inner / "secret").write_text(MARK)
    mount(str(inner), str(ro / "sub"), None, MS_BIND)
    (work / "host-only").write_text(MARK)
    config = work / "configuration.toml"
    config.write_text("[agent.kata]\ndebug_console_enabled = true\n")
    cid = f"hostile-{uuid.uuid4().hex[:8]}"
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, "--runtime-config-path", str(config),
                    "--mount", f"type=bind,src={ro},dst=/ro,options=rbind:ro",
                    "--mount", f"type=bind,src={rw},dst=/rw,options=rbind:rw",
                    busybox_image, cid, "sleep", "600", timeout=300)
    assert result.returncode == 0, result.stderr
    try:
        yield cd, cid, work
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        cd.ctr("task", "rm", "-f", cid, timeout=60)
        cd.ctr("container", "rm", cid)
        unmount_all_under(str(work))
        assert_nothing_left()


def share_of(cid: str, volume: str) -> str:
    """The guest path of a volume's share, as a shell glob (a folder is the pod's, shared
    once under .volumes: shim.sandbox.sandbox.POD_VOLUMES)."""
    return f"{GUEST_SHARED_DIR}/{POD_VOLUMES}/*-{volume}"


def test_guest_root_cannot_write_into_a_read_only_volume(pod):
    cd, cid, work = pod
    ro = share_of(cid, "ro-volume")
    got = guest_root(cid, f"""
        cd {ro} || exit 90
        cat file sub/secret
        echo owned > file; echo "file=$?"
        echo owned > sub/secret; echo "sub=$?"
        touch planted; echo "new=$?"
        mount -o remount,rw {GUEST_SHARED_DIR} 2>/dev/null
        echo owned > file; echo "again=$?"
        rm -f file; echo "rm=$?"
    """)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.count(MARK) == 2, got.stdout  # the guest reads both, submount included
    for attempt in ("file", "sub", "new", "again", "rm"):
        assert f"{attempt}=0" not in got.stdout, got.stdout
    assert (work / "ro-volume" / "file").read_text() == MARK
    assert (work / "inner" / "secret").read_text() == MARK
    assert sorted(p.name for p in (work / "ro-volume").iterdir()) == ["file", "sub"]
    inside = cd.ctr("task", "exec", "--exec-id", "w", cid, "sh", "-c",
                    "echo owned > /ro/file; echo rc=$?", timeout=60)
    assert "rc=0" not in inside.stdout and (work / "ro-volume" / "file").read_text() == MARK


def test_a_writable_volume_stays_writable(pod):
    cd, cid, work = pod
    got = cd.ctr("task", "exec", "--exec-id", "rw", cid, "sh", "-c",
                 "echo from-the-container > /rw/out", timeout=60)
    assert got.returncode == 0, got.stderr
    assert (work / "rw-volume" / "out").read_text() == "from-the-container\n"


def test_planted_symlinks_do_not_lead_out_of_the_share(pod):
    _cd, cid, work = pod
    host_file = work / "host-only"
    rw = share_of(cid, "rw-volume")
    got = guest_root(cid, f"""
        cd {rw} || exit 90
        ln -s {host_file} absolute
        ln -s ../../../../../../../../{host_file} dotdot
        ln -s / root
        cat absolute dotdot root{host_file} {host_file} 2>&1
        echo owned > absolute; echo owned > dotdot
        true
    """)
    assert got.returncode == 0, got.stdout + got.stderr
    assert MARK not in got.stdout, got.stdout
    assert host_file.read_text() == MARK
    # the links are in the host folder as the guest made them: the host never follows them
    assert (work / "rw-volume" / "absolute").is_symlink()
