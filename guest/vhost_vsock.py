"""``pykata-image host-vhost-vsock``: sid's vhost-device-vsock, the hybrid vsock daemon.

It is QEMU's vhost-user-vsock backend: the guest gets a real virtio-vsock device and
the host reaches its ports through a Unix socket (`CONNECT <port>`). bookworm has no
package; sid's (rust-vmm, 0.3.0) needs only glibc >= 2.34 and libgcc, so bookworm runs
it as it is. It is fetched with a private apt set-up (the host's sources are left
alone) and installed as one binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from guest import ui
from guest.private_apt import SuiteApt
from guest.ui import BuildError

DEFAULT_DIR = Path("/usr/share/pykata/vhost-device-vsock")
SUITE = "sid"
PACKAGE = "vhost-device-vsock"
BINARY = "vhost-device-vsock"
_STAMP = "versions.json"


def version(binary: Path) -> str:
    """`vhost-device-vsock 0.3.0`; BuildError naming why it does not run (e.g. glibc)."""
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                           timeout=30, check=False)
    except OSError as exc:
        raise BuildError(f"{binary} does not run: {exc}") from None
    text = (r.stdout + r.stderr).strip()
    if r.returncode != 0 or BINARY not in text:
        hint = " (it needs a newer glibc than this host's)" if "GLIBC_" in text else ""
        raise BuildError(f"{binary} --version failed{hint}: {text}")
    return text.splitlines()[0]


def install(out: Path = DEFAULT_DIR, cache: Path | None = None) -> Path:
    """Fetch and install the daemon unless the installed one is sid's current version;
    returns the binary's path."""
    out = out.resolve()
    binary = out / BINARY
    ui.step(f"{PACKAGE} from Debian {SUITE} (private apt set-up)")
    from guest.debs import DEFAULT_CACHE

    with SuiteApt(SUITE, cache or DEFAULT_CACHE) as apt:
        versions = apt.versions([PACKAGE])
        try:
            old = json.loads((out / _STAMP).read_text())
        except (OSError, ValueError):
            old = None
        if old == versions and binary.is_file():
            try:
                ui.step(f"up to date: {version(binary)}")
                return binary
            except BuildError:
                pass
        root = apt.work / "unpacked"
        apt.unpack([PACKAGE], root)
        found = root / "usr/bin" / BINARY
        if not found.is_file():
            raise BuildError(f"{PACKAGE} {versions[PACKAGE]} has no usr/bin/{BINARY}")
        name = version(found)
        out.mkdir(parents=True, exist_ok=True)
        staged = out / f".{BINARY}.new"
        shutil.copy2(found, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, binary)
    (out / _STAMP).write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    ui.step(f"done: {binary} ({name})")
    return binary
