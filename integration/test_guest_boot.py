"""Build the guest image from Debian packages and boot it under QEMU (TCG).

The self-test (``pykata.selftest=1``) must report: Python 3.11 with protobuf on
upb, ttrpc and protos importing, the virtio modules loaded, the agent's
virtio-serial port ``agent.channel.0``, and a file read from the host over
virtiofs (tag ``kataShared``, served by the trixie virtiofsd wrapper).
Fails (never skips) when QEMU or the image cannot be had.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from guest import boot, builder, virtiofsd
from guest.debs import DEFAULT_CACHE
from guest.ui import BuildError

pytestmark = pytest.mark.integration

#: Built here (not in a temp dir) so that reruns find it up to date in seconds.
IMAGE_DIR = Path(os.environ.get("PYKATA_TEST_IMAGE", "/var/cache/pykata/test-image"))
VIRTIOFSD_DIR = Path(os.environ.get("PYKATA_TEST_VIRTIOFSD", "/var/cache/pykata/test-virtiofsd"))
BOOT_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def image() -> Path:
    try:
        builder.build(IMAGE_DIR, DEFAULT_CACHE)
    except BuildError as e:
        pytest.fail(f"pykata-image build failed: {e}")
    return IMAGE_DIR


@pytest.fixture(scope="module")
def virtiofsd_wrapper() -> Path:
    try:
        return virtiofsd.install(VIRTIOFSD_DIR, DEFAULT_CACHE)
    except BuildError as e:
        pytest.fail(f"pykata-image host-virtiofsd failed: {e}")


@pytest.fixture(scope="module")
def selftest(image: Path, virtiofsd_wrapper: Path) -> boot.BootResult:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    result = boot.boot_selftest(image, virtiofsd=virtiofsd_wrapper, timeout=BOOT_TIMEOUT)
    print(result.line)
    print(f"wall to the self-test line: {result.wall:.2f}s")
    return result


def test_selftest_passes(selftest: boot.BootResult) -> None:
    assert selftest.line, "no PYKATA-SELFTEST line within the timeout:\n" + selftest.console
    assert selftest.ok, selftest.line + "\n" + selftest.console


def test_python_and_imports(selftest: boot.BootResult) -> None:
    f = selftest.fields
    assert f["python"].startswith("3.11.")
    assert f["protobuf"].endswith("/upb")
    for key in ("imp_protobuf", "imp_ttrpc", "imp_protos", "imp_stdlib", "py_start"):
        assert float(f[key]) >= 0.0


def test_devices(selftest: boot.BootResult, image: Path) -> None:
    f = selftest.fields
    loaded, wanted = f["modules"].split("/")
    assert loaded == wanted == str(len(builder.manifest.load(image)["modules"]))
    assert "agent.channel.0" in f["ports"].split(",")
    assert f["net"] == "eth0"
    assert f["vsock"] == "yes"  # the module loaded (the host has no vhost-vsock here)
    assert f["cgroups"] == "v1+v2"
    assert f["mounts"] == "ok"  # every hierarchy /proc/cgroups enables, each option asked
    assert f["runc"].startswith("1.")


def test_virtiofs_reads_the_host_file(selftest: boot.BootResult) -> None:
    assert selftest.fields["virtiofs"] == selftest.share_token


def test_guest_reports_boot_phases(selftest: boot.BootResult) -> None:
    f = selftest.fields
    steps = [float(f[k]) for k in ("t_init", "t_mounts", "t_modules", "t_pyexec", "t_pystart",
                                   "t_imports", "t_ok")]
    assert steps == sorted(steps) and steps[0] > 0
    assert int(f["mem_used_kb"]) > 0


def test_rebuild_is_a_no_op(image: Path) -> None:
    initrd = image / builder.INITRD_NAME
    before = (initrd.stat().st_mtime_ns, (image / "manifest.json").read_bytes())
    m = builder.build(image, DEFAULT_CACHE)
    assert (initrd.stat().st_mtime_ns, (image / "manifest.json").read_bytes()) == before
    assert m["initrd"]["sha256"] == builder.manifest.sha256_file(initrd)
    assert m["python"]["pyc_magic"] == "a70d0d0a"  # CPython 3.11
