"""``pykata-image host-virtiofsd``: trixie's virtiofsd with a private glibc.

bookworm has no virtiofsd and trixie's needs glibc >= 2.39, so the packages are
unpacked into a private folder and run through that folder's own ld-linux. A
``trixie`` apt source is added pinned below 100 so the host's libc is never
upgraded from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from guest import manifest, spec, ui
from guest.debs import Apt
from guest.ui import BuildError

DEFAULT_DIR = Path("/usr/share/pykata/virtiofsd")
SOURCES_FILE = Path("/etc/apt/sources.list.d/pykata-trixie.sources")
PREFERENCES_FILE = Path("/etc/apt/preferences.d/pykata-trixie")
_SOURCES_DIRS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
_STAMP = "versions.json"


def debian_mirror(paths: tuple[Path, ...] = _SOURCES_DIRS) -> tuple[str, str]:
    """(URI, Signed-By keyring) of the apt source that serves bookworm's main archive."""
    texts = []
    for p in paths:
        files = sorted(p.glob("*.sources")) + sorted(p.glob("*.list")) if p.is_dir() else [p]
        texts += [f.read_text() for f in files if f.is_file()]
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    for text in texts:
        for block in text.split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, re.M))
            if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0], fields.get("Signed-By", keyring)
        for line in text.splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m:
                return m.group(1), keyring
    raise BuildError("no apt source for bookworm found: cannot derive a Debian mirror")


def sources_text(uri: str, keyring: str) -> str:
    """The deb822 source for trixie."""
    return (f"# added by pykata-image host-virtiofsd (pinned in {PREFERENCES_FILE})\n"
            f"Types: deb\nURIs: {uri}\nSuites: {spec.VIRTIOFSD_SUITE}\nComponents: main\n"
            f"Signed-By: {keyring}\n")


def preferences_text() -> str:
    """The pin that keeps trixie packages from replacing the host's."""
    return ("# added by pykata-image host-virtiofsd: trixie only when asked for by name\n"
            f"Package: *\nPin: release n={spec.VIRTIOFSD_SUITE}\n"
            f"Pin-Priority: {spec.VIRTIOFSD_PIN_PRIORITY}\n")


def _write(path: Path, text: str) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not manifest.write_if_changed(path, text.encode()):
        return False
    ui.info(f"wrote {path}")
    return True


def ensure_trixie_source() -> bool:
    """Add the pinned trixie source (pin first); True if anything changed."""
    uri, keyring = debian_mirror()
    changed = _write(PREFERENCES_FILE, preferences_text())
    return _write(SOURCES_FILE, sources_text(uri, keyring)) or changed


def wrapper_text(root: Path) -> str:
    """Shell wrapper that runs virtiofsd through the private loader."""
    lib = root / "usr/lib/x86_64-linux-gnu"
    return ("#!/bin/sh\n"
            "# virtiofsd from Debian trixie with its own glibc (pykata-image host-virtiofsd)\n"
            f'exec "{lib}/ld-linux-x86-64.so.2" --inhibit-cache --library-path "{lib}" '
            f'--argv0 virtiofsd "{root}/usr/libexec/virtiofsd" "$@"\n')


def _version(wrapper: Path) -> str:
    r = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0 or "virtiofsd" not in r.stdout + r.stderr:
        raise BuildError(f"{wrapper} --version failed: {(r.stdout + r.stderr).strip()}")
    return (r.stdout + r.stderr).strip().splitlines()[0]


def install(out: Path = DEFAULT_DIR, cache: Path | None = None) -> Path:
    """Fetch, unpack, write the wrapper, check ``--version``; returns the wrapper path."""
    from guest.debs import DEFAULT_CACHE

    out = out.resolve()
    ui.step(f"apt source for {spec.VIRTIOFSD_SUITE} (pinned at {spec.VIRTIOFSD_PIN_PRIORITY})")
    apt = Apt(cache or DEFAULT_CACHE)
    if ensure_trixie_source():
        apt.update(f"new {spec.VIRTIOFSD_SUITE} source")
    ui.step("resolving packages")
    debs = apt.resolve_suite(list(spec.VIRTIOFSD_PACKAGES), spec.VIRTIOFSD_SUITE)
    versions = {n: d.version for n, d in debs.items()}
    wrapper, root = out / "virtiofsd", out / "root"
    try:
        old = json.loads((out / _STAMP).read_text())
    except (OSError, ValueError):
        old = None
    if old == versions and wrapper.is_file():
        try:
            ui.step(f"up to date: {_version(wrapper)}")
            return wrapper
        except BuildError:
            pass
    ui.step("fetching packages")
    paths = apt.fetch(list(debs.values()))
    tmp = out / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, deb in paths.items():
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            raise BuildError(f"dpkg-deb -x {name} failed: {r.stderr.strip()}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    wrapper.write_text(wrapper_text(root))
    os.chmod(wrapper, 0o755)
    version = _version(wrapper)
    (out / _STAMP).write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    ui.step(f"done: {wrapper} ({version})")
    return wrapper
