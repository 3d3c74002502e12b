"""containerd 1.6, 1.7 and 2.x for the test matrix: each from its Debian package.

1.6 is the host's (bookworm). 1.7 is trixie's and 2.x sid's: both run on
bookworm's libc as they are, so they are downloaded with a private apt set-up
(its own sources list, lists and cache under the cache dir; the host's apt
sources are never touched), unpacked with `dpkg-deb -x` and cached.
`suite_packages` does the same for any packages (Docker's, in docker_env.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from integration.containerd_env import default_cache_dir

# The containerd lines the end-to-end matrix runs under: bookworm's 1.6, trixie's
# 1.7 and sid's 2.x.
CONTAINERD_LINES = ("1.6", "1.7", "2")
# Which Debian suite carries which containerd line.
SUITES = {"1.7": "trixie", "2": "sid"}
PACKAGES = ("containerd",)  # ctr ships in the containerd package


@dataclass(frozen=True)
class ContainerdBinaries:
    """Where one containerd version's `containerd` and `ctr` are, and its version."""

    line: str  # "1.6", "1.7", "2"
    containerd: str
    ctr: str
    version: str


def _version_of(containerd: str) -> str:
    out = subprocess.run([containerd, "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    match = re.search(r"\s(v?\d+\.\d+\.\d+\S*)", out)
    return match.group(1).lstrip("v") if match else out.strip()


def host_containerd() -> ContainerdBinaries:
    """The host's containerd (bookworm: 1.6)."""
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    if not containerd or not ctr:
        raise RuntimeError("containerd/ctr not installed: run `make host-packages`")
    version = _version_of(containerd)
    return ContainerdBinaries(".".join(version.split(".")[:2]), containerd, ctr, version)


def _fetch(suite: str, dest: Path, packages: Sequence[str] = PACKAGES) -> None:
    """Download `packages` from Debian `suite` with a private apt set-up and unpack them
    all into `dest` (replaced)."""
    from guest.private_apt import SuiteApt

    with SuiteApt(suite, dest.parent) as apt:
        apt.unpack(packages, dest)


def suite_packages(
    suite: str,
    packages: Sequence[str],
    folder: str,
    needed: Sequence[str],
    cache_dir: Path | None = None,
) -> Path:
    """Debian `packages` of `suite`, unpacked once into `<cache>/<folder>/<suite>`; fetched
    again when a path of `needed` (relative to that root) is missing. Returns the root."""
    base = (cache_dir or default_cache_dir()) / folder
    base.mkdir(parents=True, exist_ok=True)
    dest = base / suite
    if not all((dest / path).exists() for path in needed):
        _fetch(suite, dest, packages)
    return dest


def suite_containerd(line: str, cache_dir: Path | None = None) -> ContainerdBinaries:
    """containerd `line` ("1.7" or "2") from its Debian suite, downloaded once and cached."""
    suite = SUITES[line]
    dest = suite_packages(suite, PACKAGES, "containerd", ("usr/bin/containerd", "usr/bin/ctr"),
                          cache_dir)
    containerd, ctr = dest / "usr/bin/containerd", dest / "usr/bin/ctr"
    version = _version_of(str(containerd))
    if not version.startswith(line):
        raise RuntimeError(f"{suite} ships containerd {version}, not {line}.x")
    return ContainerdBinaries(line, str(containerd), str(ctr), version)


def containerd_for(line: str) -> ContainerdBinaries:
    """The containerd of a version line: "1.6" (host), "1.7" or "2"."""
    if line == "1.6":
        found = host_containerd()
        if found.line != "1.6":
            raise RuntimeError(f"the host's containerd is {found.version}, not 1.6")
        return found
    return suite_containerd(line)
