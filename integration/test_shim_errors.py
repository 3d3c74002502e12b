"""Bad configurations end in a precise error from `ctr run`, and leave nothing behind."""

from __future__ import annotations

import time
import uuid

import pytest

from integration.pykata_env import RUNTIME, ensure_guest_assets, ensure_shim_on_path, leftovers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pykata(containerd, busybox_image):
    ensure_shim_on_path()
    ensure_guest_assets()
    return containerd, busybox_image


def run_with_config(pykata, tmp_path, toml: str, timeout: float = 180):
    cd, image = pykata
    config = tmp_path / "configuration.toml"
    config.write_text(toml)
    cid = f"pk-err-{uuid.uuid4().hex[:8]}"
    result = cd.ctr(
        "run",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        str(config),
        "--rm",
        image,
        cid,
        "true",
        timeout=timeout,
    )
    cd.ctr("container", "delete", cid)
    deadline = time.monotonic() + 20
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(), f"a failed start left things behind: {leftovers()}"
    return result


def test_missing_kernel_is_named(pykata, tmp_path):
    result = run_with_config(
        pykata, tmp_path, '[hypervisor.qemu]\nkernel = "/nonexistent/vmlinuz"\n'
    )
    assert result.returncode != 0
    assert "/nonexistent/vmlinuz" in result.stderr


def test_qemu_that_dies_reports_its_exit(pykata, tmp_path):
    result = run_with_config(
        pykata,
        tmp_path,
        '[hypervisor.qemu]\nkernel_params = "pykata.test=1"\nmachine_type = "no-such-machine"\n',
    )
    assert result.returncode != 0
    assert "QEMU" in result.stderr
    assert "unsupported machine type" in result.stderr  # QEMU's own words, from its stderr


def test_agent_that_never_answers_hits_the_deadline(pykata, tmp_path):
    result = run_with_config(
        pykata,
        tmp_path,
        # the guest sleeps instead of starting the agent (init= on the image, the
        # default root; rdinit= on an initrd)
        '[hypervisor.qemu]\nkernel_params = "init=/bin/sleep rdinit=/bin/sleep -- 600"\n'
        "[agent.kata]\ndial_timeout = 8\n",
    )
    assert result.returncode != 0
    assert "agent" in result.stderr
    assert "did not answer within 8s" in result.stderr


def test_bad_configuration_value_is_named(pykata, tmp_path):
    result = run_with_config(pykata, tmp_path, '[hypervisor.qemu]\ndefault_vcpus = "two"\n')
    assert result.returncode != 0
    assert "default_vcpus" in result.stderr
