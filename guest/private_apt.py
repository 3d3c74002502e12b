"""Debian packages of another suite, fetched with an apt set-up of our own.

Its sources list, lists, cache and (empty) status live in a work folder: the host's
apt sources and installed packages are never read or touched, so nothing of the other
suite can ever be installed on the host by accident.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from guest.ui import BuildError


def _options(apt_dir: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::sourcelist={apt_dir / 'sources.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", f"Dir::State::status={apt_dir / 'status'}",  # empty: the host's installs ignored
        "-o", "APT::Get::List-Cleanup=0",
        "-o", "Debug::NoLocking=1",
    ]


def _run(apt_dir: Path, tool: str, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run([tool, "-q", *_options(apt_dir), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise BuildError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


class SuiteApt:
    """apt for one suite, in a work folder of its own (removed by `close`)."""

    def __init__(self, suite: str, parent: Path) -> None:
        from guest.virtiofsd import debian_mirror

        parent.mkdir(parents=True, exist_ok=True)
        self.suite = suite
        self.work = Path(tempfile.mkdtemp(prefix=f".apt-{suite}-", dir=parent))
        self.apt_dir = self.work / "apt"
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.apt_dir / sub).mkdir(parents=True)
        (self.apt_dir / "status").write_text("")
        uri, keyring = debian_mirror()
        (self.apt_dir / "sources.list").write_text(
            f"deb [signed-by={keyring}] {uri} {suite} main\n")

    def __enter__(self) -> SuiteApt:
        _run(self.apt_dir, "apt-get", "update")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def versions(self, packages: Sequence[str]) -> dict[str, str]:
        """{package: candidate version} in this suite."""
        out = _run(self.apt_dir, "apt-cache", "show", "--no-all-versions", *packages)
        found: dict[str, str] = {}
        name = None
        for line in out.splitlines():
            if line.startswith("Package: "):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Version: ") and name is not None:
                found.setdefault(name, line.split(":", 1)[1].strip())
        missing = [p for p in packages if p not in found]
        if missing:
            raise BuildError(f"{self.suite} has no {', '.join(missing)}")
        return found

    def unpack(self, packages: Sequence[str], dest: Path) -> None:
        """Download `packages` and unpack them all into `dest` (replaced)."""
        debs = self.work / "debs"
        debs.mkdir(exist_ok=True)
        _run(self.apt_dir, "apt-get", "download",
             *(f"{p}/{self.suite}" for p in packages), cwd=debs)
        root = self.work / "root"
        for deb in sorted(debs.glob("*.deb")):
            result = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)],
                                    capture_output=True, text=True, timeout=300, check=False)
            if result.returncode != 0:
                raise BuildError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
        shutil.rmtree(dest, ignore_errors=True)
        root.rename(dest)
