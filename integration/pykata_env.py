"""What the end-to-end tests need around containerd: the shim on PATH, the guest image,
and a check that nothing pykata started is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from integration.containerd_env import _mounts_under, _pids_with_arg

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = "io.containerd.pykata.v2"
SHIM_NAME = "containerd-shim-pykata-v2"
STATE_ROOT = Path(os.environ.get("PYKATA_STATE_ROOT", "/run/pykata"))
ASSETS = Path("/usr/share/pykata")


def ensure_shim_on_path() -> str:
    """The shim binary containerd will exec; `make dev` links it into /usr/local/bin."""
    found = shutil.which(SHIM_NAME)
    if found is None:
        raise RuntimeError(f"{SHIM_NAME} is not on PATH: run `make dev` (or `make setup`)")
    return found


def ensure_guest_assets() -> None:
    """Build the guest kernel + initrd, and install the host's virtiofsd and
    vhost-device-vsock, once each (cached by the builder)."""
    missing = [
        p
        for p in (
            ASSETS / "vmlinuz",
            ASSETS / "pykata-initrd.img",
            ASSETS / "pykata-rootfs.img",
            ASSETS / "virtiofsd" / "virtiofsd",
        )
        if not p.exists()
    ]
    if missing:
        for command in (["build"], ["host-virtiofsd"]):
            subprocess.run([sys.executable, "-m", "guest", *command], cwd=ROOT, check=True)
    if not (ASSETS / "vhost-device-vsock" / "vhost-device-vsock").exists():
        subprocess.run([sys.executable, "-m", "guest", "host-vhost-vsock"], cwd=ROOT, check=True)


def leftovers() -> dict[str, list[str] | list[int]]:
    """pykata processes, mounts and state still present (all must be empty after a test)."""
    found: dict[str, list[str] | list[int]] = {
        "shim processes": [p for p in _pids_with_arg(SHIM_NAME) if p != os.getpid()],
        "qemu processes": _pids_with_arg(str(STATE_ROOT) + "/"),
        "mounts": _mounts_under(STATE_ROOT),
        "state": [str(p) for p in STATE_ROOT.glob("*/*")] if STATE_ROOT.exists() else [],
    }
    return {k: v for k, v in found.items() if v}


def assert_nothing_left(timeout: float = 20.0) -> None:
    """Wait up to `timeout` for pykata's leftovers to go (teardown is asynchronous), then
    fail naming whatever is still there."""
    deadline = time.monotonic() + timeout
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers()
    assert not left, f"pykata left things behind: {left}"
