"""Smoke tests for the private containerd, the busybox image and the Go ttrpc peer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from integration.containerd_env import (
    BUSYBOX_IMAGE,
    PrivateContainerd,
    _mounts_under,
    _pids_with_arg,
    build_busybox_image,
    import_busybox,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_busybox_image_layout(tmp_path: Path) -> None:
    """The tarball is an OCI layout, reproducible and cached by content."""
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    first = build_busybox_image(tmp_path)
    data = first.read_bytes()
    assert build_busybox_image(tmp_path) == first  # cache hit
    first.unlink()
    assert build_busybox_image(tmp_path).read_bytes() == data  # reproducible
    with tarfile.open(first) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json"} <= names
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == BUSYBOX_IMAGE
    assert "blobs/sha256/" + entry["digest"].split(":")[1] in names


def test_containerd_answers(containerd: PrivateContainerd) -> None:
    res = containerd.ctr("version", check=True)
    assert "Server:" in res.stdout
    assert len(containerd.address.encode()) < 108
    assert len(containerd.ttrpc_address.encode()) < 108
    assert os.path.exists(containerd.ttrpc_address)
    assert not containerd.address.startswith("/run/containerd")


def test_run_echo_hello_with_runc(containerd: PrivateContainerd, busybox_image: str) -> None:
    res = containerd.ctr("run", "--rm", busybox_image, "smoke-echo", "echo", "hello",
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello"
    # the image's own config: Cmd ["sh"], PATH set, /etc/passwd present
    res = containerd.ctr("run", "--rm", busybox_image, "smoke-id", "sh", "-c",
                         "id -un; echo $PATH; test -d /tmp && test -d /proc/1 && echo dirs",
                         timeout=60)
    assert res.returncode == 0, res.stderr
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert res.stdout.split() == ["root", path, "dirs"]


def test_stop_leaves_nothing_behind() -> None:
    """A running container at stop(): no process, mount or temp dir remains."""
    for b in ("containerd", "ctr", "runc"):
        if shutil.which(b) is None:
            pytest.skip(f"{b} missing")
    cd = PrivateContainerd().start()
    try:
        image = import_busybox(cd)
        res = cd.ctr("run", "-d", image, "sleeper", "sleep", "1000", timeout=60)
        assert res.returncode == 0, res.stderr
        assert _mounts_under(cd.dir), "expected the container's rootfs mount"
        shims = _pids_with_arg(cd.address)
        assert shims, "expected a runc shim for the running container"
        task_pid = int(cd.ctr("tasks", "ls").stdout.splitlines()[1].split()[1])
    finally:
        cd.stop()
    assert cd.proc is not None and cd.proc.poll() is not None
    assert not _pids_with_arg(cd.address)
    assert not Path(f"/proc/{task_pid}").exists() or _is_zombie(task_pid)
    assert not _mounts_under(cd.dir)
    assert not cd.dir.exists()
    cd.stop()  # idempotent


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_gottrpc_self_check(gottrpc: Path) -> None:
    """The Go peer builds and emits the ttrpc Request encoding."""
    out = subprocess.run(
        [str(gottrpc), "rawreq", "-service", "svc", "-method", "M", "-payload-hex", "0102",
         "-timeout-nano", "5000000000", "-md", "a=b"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    assert out == "0a0373766312014d1a0201022080e497d0122a060a0161120162"
