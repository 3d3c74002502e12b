"""Debian's cloud kernel stays a choice: a guest built with `pykata-image build --kernel
debian-cloud` (the cloud kernel, its modules in the initrd, loaded by /init) runs a pod
when `[hypervisor.qemu] kernel` and `initrd` name it. Every other test boots pykata's own
kernel, the default; this one keeps the other path alive."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from integration.pykata_env import (
    ROOT,
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
CLOUD_GUEST = Path("/var/cache/pykata/cloud-guest")  # a build folder of its own


@pytest.fixture(scope="module")
def cloud_guest() -> Path:
    ensure_shim_on_path()
    ensure_guest_assets()
    subprocess.run([sys.executable, "-m", "guest", "build", "--kernel", "debian-cloud",
                    "--out", str(CLOUD_GUEST)], cwd=ROOT, check=True, timeout=1800)
    return CLOUD_GUEST


def test_a_pod_boots_debians_cloud_kernel_when_configured(containerd, busybox_image,
                                                          cloud_guest, tmp_path):
    manifest = json.loads((cloud_guest / "manifest.json").read_text())
    assert manifest["kernel"]["flavour"] == "debian-cloud"
    config = tmp_path / "configuration.toml"
    # the whole guest as the initrd: no image (the default one is our kernel's build)
    config.write_text(f'[hypervisor.qemu]\nkernel = "{cloud_guest / "vmlinuz"}"\n'
                      f'initrd = "{cloud_guest / "pykata-initrd.img"}"\nimage = ""\n')
    cid = f"cloud-{uuid.uuid4().hex[:6]}"
    result = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--runtime-config-path",
                            str(config), busybox_image, cid,
                            "sh", "-c", "uname -r; grep -c . /proc/modules", timeout=300)
    assert result.returncode == 0, result.stderr + containerd.log_tail()
    release, modules = result.stdout.split()
    assert release == manifest["kernel"]["release"] and release.endswith("-cloud-amd64")
    assert int(modules) > 0, "the cloud kernel's modules were not loaded from the initrd"
    assert_nothing_left()
