"""The default guest root: the ext4 image on a read-only, shared virtio-pmem device that
our kernel mounts itself (no first stage), with DAX. Every pod of the host maps the same
file, so a guest that could write it would reach every other pod: the attacker here is
root in the VM, and the image on the host must not change."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
IMAGE = Path("/usr/share/pykata/pykata-rootfs.img")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _guest(config: Path, cid: str, script: str) -> subprocess.CompletedProcess:
    """`script` as root in the pod's VM (not in its container), over the debug console."""
    return subprocess.run([sys.executable, "-m", "shim.admin", "--config", str(config), "exec",
                           cid, "sh", "-c", script], capture_output=True, text=True, timeout=120)


def test_the_default_root_is_the_image_read_only_with_dax_and_a_guest_cannot_write_it(
        containerd, busybox_image, tmp_path):
    ensure_shim_on_path()
    ensure_guest_assets()
    before = _digest(IMAGE)
    config = tmp_path / "configuration.toml"
    config.write_text("[agent.kata]\ndebug_console_enabled = true\n")  # the defaults else
    cid = f"img-{uuid.uuid4().hex[:6]}"
    started = containerd.ctr("run", "-d", "--runtime", RUNTIME, "--runtime-config-path",
                             str(config), busybox_image, cid, "sleep", "600", timeout=300)
    assert started.returncode == 0, started.stderr + containerd.log_tail()
    try:
        root = _guest(config, cid, "grep ' / ' /proc/mounts; cat /proc/cmdline")
        assert root.returncode == 0, root.stderr
        line = next(x for x in root.stdout.splitlines() if x.startswith("/dev/root")
                    or x.startswith("/dev/pmem0"))
        options = line.split()[3].split(",")
        assert "ro" in options and "dax=always" in options, line
        assert "root=/dev/pmem0" in root.stdout and "initrd" not in root.stdout
        # the one file of the root the agent writes stands on /run
        dns = _guest(config, cid, "echo nameserver 198.18.0.53 > /etc/resolv.conf && "
                                  "cat /etc/resolv.conf")
        assert dns.stdout.strip() == "nameserver 198.18.0.53", dns.stdout + dns.stderr
        said = containerd.ctr("task", "exec", "--exec-id", "e1", cid, "echo", "alive",
                              timeout=60)
        assert said.stdout.strip() == "alive", said.stderr
        # the attacker: remount the root writable, write through it, and write the
        # device itself; the VM may die of it, the host's file must not change
        _guest(config, cid, "mount -o remount,rw / && echo owned > /usr/owned; sync; "
                            "dd if=/dev/zero of=/dev/pmem0 bs=4096 count=64 conv=notrunc; "
                            "sync; echo done")
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", cid)
        containerd.ctr("task", "rm", "-f", cid, timeout=120)
        containerd.ctr("container", "rm", cid)
    assert _digest(IMAGE) == before, "a guest changed the shared guest image on the host"
    # and the next pod boots from it as before
    after = containerd.ctr("run", "--rm", "--runtime", RUNTIME, busybox_image,
                           f"img2-{uuid.uuid4().hex[:6]}", "echo", "next", timeout=300)
    assert after.returncode == 0 and after.stdout.strip() == "next", after.stderr
    assert_nothing_left()
