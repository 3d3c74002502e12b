"""Debian packages: resolve versions with apt-cache, download, cache, unpack.

Packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
into a cache; nothing is installed on the host.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from guest import ui
from guest.ui import BuildError

DEFAULT_CACHE = Path("/var/cache/pykata/debs")
_UNPACKED_MARK = ".pykata-unpacked"


@dataclass(frozen=True)
class Deb:
    """One binary package at an exact version."""

    name: str
    version: str
    arch: str
    sha256: str
    size: int
    depends: str = ""

    @property
    def filename(self) -> str:
        """The file name ``apt-get download`` writes (epoch colon quoted)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def parse_paragraphs(text: str) -> list[dict[str, str]]:
    """Parse deb822 text (apt-cache show output) into dicts of fields."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def depends_names(depends: str) -> list[str]:
    """Package names of a Depends field (first alternative of each, no versions)."""
    names = []
    for item in depends.split(","):
        first = item.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


def parse_madison(text: str, suite: str) -> dict[str, str]:
    """package -> the first version ``apt-cache madison`` lists for ``suite`` (e.g. trixie)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and any(w.split("/")[0] == suite for w in parts[2].split()):
            found.setdefault(parts[0], parts[1])
    return found


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    ui.detail("$ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} not found: install it (apt-get install apt dpkg)") from e


class Apt:
    """apt-cache / apt-get download with a download cache and an unpack cache."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.unpacked = cache / ".unpacked"
        self._updated = False

    # -- apt lists -----------------------------------------------------------
    def update(self, reason: str) -> None:
        """Run ``apt-get update`` once per process (waits while apt is busy)."""
        if self._updated:
            return
        self._updated = True
        ui.step(f"apt-get update ({reason})")
        for _ in range(120):
            r = _run(["apt-get", "update", "-q"])
            if r.returncode == 0:
                return
            if "lock" not in r.stderr.lower():
                raise BuildError(f"apt-get update failed:\n{r.stderr.strip()}")
            ui.info("apt is busy (lock held by another process), waiting...")
            time.sleep(5)
        raise BuildError("apt-get update: the apt lock stayed busy for 10 minutes")

    # -- resolving -----------------------------------------------------------
    def _show(self, specs: list[str]) -> dict[str, Deb]:
        r = _run(["apt-cache", "show", "--no-all-versions", *specs])
        found: dict[str, Deb] = {}
        for p in parse_paragraphs(r.stdout):
            if "Package" not in p or p["Package"] in found:
                continue
            found[p["Package"]] = Deb(
                name=p["Package"],
                version=p["Version"],
                arch=p.get("Architecture", "amd64"),
                sha256=p.get("SHA256", ""),
                size=int(p.get("Size", "0")),
                depends=p.get("Depends", ""),
            )
        return found

    def resolve(self, names: list[str]) -> dict[str, Deb]:
        """Candidate versions of ``names``; runs apt-get update once if one is missing."""
        found = self._show(names)
        missing = [n for n in names if n not in found]
        if missing:
            self.update("apt-cache does not know " + ", ".join(missing))
            found = self._show(names)
            missing = [n for n in names if n not in found]
        if missing:
            raise BuildError(
                "Debian package(s) not found by apt-cache: " + ", ".join(missing)
                + " (check /etc/apt/sources.list.d and run apt-get update)"
            )
        return {n: found[n] for n in names}

    def resolve_suite(self, names: list[str], suite: str) -> dict[str, Deb]:
        """The versions of ``names`` that ``suite`` (e.g. trixie) has."""
        versions = parse_madison(_run(["apt-cache", "madison", *names]).stdout, suite)
        if any(n not in versions for n in names):
            self.update(f"{suite} versions unknown")
            versions = parse_madison(_run(["apt-cache", "madison", *names]).stdout, suite)
        missing = [n for n in names if n not in versions]
        if missing:
            raise BuildError(f"not found in suite {suite} (apt-cache madison): "
                             + ", ".join(missing))
        found = self._show([f"{n}={versions[n]}" for n in names])
        return {n: found[n] for n in names}

    # -- downloading -----------------------------------------------------------
    def _cached_ok(self, deb: Deb) -> bool:
        path = self.cache / deb.filename
        if not path.is_file():
            return False
        if not deb.sha256:
            return True
        return hashlib.sha256(path.read_bytes()).hexdigest() == deb.sha256

    def fetch(self, debs: list[Deb]) -> dict[str, Path]:
        """Make sure every deb is in the cache (sha256 checked); return their paths."""
        self.cache.mkdir(parents=True, exist_ok=True)
        todo = []
        for deb in debs:
            if self._cached_ok(deb):
                ui.info(f"cached   {deb.name} {deb.version}")
            else:
                ui.info(f"download {deb.name} {deb.version} ({ui.size(deb.size)})")
                todo.append(deb)
        if todo:
            cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
            r = _run(cmd + [f"{d.name}={d.version}" for d in todo], cwd=self.cache)
            bad = [d.name for d in todo if not self._cached_ok(d)]
            if r.returncode != 0 or bad:
                raise BuildError(
                    f"apt-get download failed for {', '.join(bad) or '?'}:\n{r.stderr.strip()}"
                )
        return {d.name: self.cache / d.filename for d in debs}

    def unpack(self, deb: Deb) -> Path:
        """``dpkg-deb -x`` the (cached) deb once; return the unpacked root."""
        dest = self.unpacked / deb.filename.removesuffix(".deb")
        if (dest / _UNPACKED_MARK).exists():
            return dest
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.mkdir(parents=True)
        r = _run(["dpkg-deb", "-x", str(self.cache / deb.filename), str(tmp)])
        if r.returncode != 0:
            raise BuildError(f"dpkg-deb -x {deb.filename} failed: {r.stderr.strip()}")
        (tmp / _UNPACKED_MARK).write_text(f"{deb.name} {deb.version}\n")
        try:
            tmp.rename(dest)
        except OSError:  # another build unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def get(self, debs: list[Deb]) -> dict[str, Path]:
        """Fetch and unpack; return package name -> unpacked root."""
        self.fetch(debs)
        return {d.name: self.unpack(d) for d in debs}
