"""A small JSON cache of host probe results, valid until the host reboots.

Keys name what a result depends on (binary paths with size and mtime); the
whole file is dropped when /proc/sys/kernel/random/boot_id changes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from shim.paths import STATE_ROOT, write_atomic

DEFAULT_CACHE_DIR = STATE_ROOT  # next to the sandboxes' state (PYKATA_STATE_ROOT moves both)
CACHE_FILE = "host-caps.json"


def boot_id() -> str:
    """This boot's id (changes at every host boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def file_identity(path: str | os.PathLike[str] | None) -> str:
    """path:size:mtime of a file (or path:missing), so a replaced binary misses the cache."""
    if path is None:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


class HostCapsCache:
    """get/put of JSON-able probe results under string keys."""

    def __init__(self, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> None:
        self.path = cache_dir / CACHE_FILE if cache_dir is not None else None

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("boot_id") != boot_id():
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> Any | None:
        return self._load().get(key)

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            return
        entries = self._load()
        entries[key] = value
        text = json.dumps({"boot_id": boot_id(), "entries": entries}, indent=2, sort_keys=True)
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text + "\n")


def probe_seccomp(qemu: str, cache: HostCapsCache | None = None) -> tuple[bool, str]:
    """Whether this QEMU accepts `-sandbox on` (built with seccomp); (ok, detail).

    `-sandbox on -version` exits 0 on a seccomp build and fails at option
    parsing ("There is no option group 'sandbox'" / "seccomp support is
    disabled") on one without.
    """
    import subprocess

    key = f"seccomp:{file_identity(qemu)}"
    if cache is not None and (hit := cache.get(key)) is not None:
        return bool(hit["ok"]), str(hit["detail"])
    try:
        r = subprocess.run(
            [qemu, "-sandbox", "on", "-version"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        ok, detail = r.returncode == 0, (r.stderr.strip() or r.stdout.strip())[-300:]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, detail = False, str(e)
    if cache is not None:
        cache.put(key, {"ok": ok, "detail": detail})
    return ok, detail
