"""The staging tree of the initrd: merged-/usr layout, /etc, busybox, shared libraries."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from guest import ui
from guest.elf import elf_info, is_elf
from guest.ui import BuildError

#: Top-level directories that are symlinks into /usr (Debian's merged /usr).
MERGED_USR = ("bin", "sbin", "lib", "lib64")
LIBDIR = "usr/lib/x86_64-linux-gnu"
#: Where libraries are looked up inside unpacked library packages.
_LIB_SEARCH = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
_DIRS = ("dev", "proc", "sys", "run", "tmp", "mnt", "root", "var/tmp", "usr/bin", "usr/sbin",
         "usr/lib64", LIBDIR, "etc/pykata")
_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    "etc/hostname": "pykata\n",
    # the agent writes the pod's DNS here; on a read-only root, /init binds a file of
    # /run over it (it must exist to be a mount point)
    "etc/resolv.conf": "",
}


def usr_path(rel: str) -> str:
    """Map a package path to the merged-/usr layout (bin/x -> usr/bin/x)."""
    rel = rel.lstrip("/")
    head, _, rest = rel.partition("/")
    return f"usr/{head}/{rest}".rstrip("/") if head in MERGED_USR else rel


def base_layout(root: Path) -> None:
    """Directories, merged-/usr symlinks and the few /etc files the guest needs."""
    for d in _DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    for name in MERGED_USR:
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"usr/{name}")
    if not (root / "var/run").is_symlink():
        (root / "var/run").symlink_to("../run")
    for rel, text in _ETC.items():
        (root / rel).write_text(text)


def install(src: Path, root: Path, rel: str, mode: int | None = None) -> Path:
    """Copy one file (dereferenced) to ``root/rel`` in the merged-/usr layout."""
    dest = root / usr_path(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, mode if mode is not None else (src.stat().st_mode & 0o7777))
    return dest


def install_plugins(src: Path, root: Path, folder: str, prefixes: tuple[str, ...]) -> list[Path]:
    """Copy the files of ``src`` whose names start with one of ``prefixes`` to ``folder``.

    A symlink to a file beside it stays a symlink. Returns the regular files copied.
    """
    if not src.is_dir():
        raise BuildError(f"{src} is not a folder (guest/spec.py PLUGIN_TREES)")
    copied = []
    for f in sorted(src.iterdir()):
        if not f.name.startswith(prefixes):
            continue
        target = os.readlink(f) if f.is_symlink() else ""
        if target and "/" not in target and (src / target).is_file():
            link = root / usr_path(f"{folder}/{f.name}")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
        elif f.is_file():
            copied.append(install(f, root, f"{folder}/{f.name}", 0o755))
    return copied


def make_links(root: Path, links: dict[str, str]) -> None:
    """Create each link (path in the guest) -> target, unless something is already there."""
    for rel, target in links.items():
        link = root / usr_path(rel)
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        if resolve_within(root, link) is None:
            raise BuildError(f"{rel} -> {target} points at nothing in the guest")


def busybox_applets(root: Path, busybox: Path) -> int:
    """Symlink every busybox applet (``busybox --list-full``) that is not a real file."""
    r = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise BuildError(f"busybox --list-full failed: {r.stderr.strip()}")
    count = 0
    for applet in r.stdout.split():
        if "/" not in applet:  # linuxrc: only for initrd-as-root-device boots
            continue
        dest = root / usr_path(applet)
        if dest.exists() or dest.is_symlink():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(os.path.relpath(root / "usr/bin/busybox", dest.parent))
        count += 1
    return count


def resolve_within(root: Path, path: Path) -> Path | None:
    """Follow symlinks of ``path`` as if ``root`` were /; None if dangling or looping."""
    for _ in range(40):
        if not path.is_symlink():
            return path if path.exists() else None
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


class LibraryIndex:
    """soname -> file, over the unpacked library packages."""

    def __init__(self, roots: dict[str, Path]) -> None:
        self.where: dict[str, tuple[str, Path]] = {}
        for pkg, root in roots.items():
            for sub in _LIB_SEARCH:
                d = root / sub
                if not d.is_dir():
                    continue
                for f in d.iterdir():
                    if ".so" in f.name and f.name not in self.where:
                        real = resolve_within(root, f)
                        if real is not None and real.is_file():
                            self.where[f.name] = (pkg, real)

    def find(self, soname: str) -> tuple[str, Path] | None:
        """(package, path) that provides ``soname``."""
        return self.where.get(soname)


def _host_package_hint(soname: str) -> str:
    r = subprocess.run(["dpkg", "-S", soname], capture_output=True, text=True, check=False)
    pkgs = sorted({line.split(":")[0] for line in r.stdout.splitlines() if ":" in line})
    return f" (on this host it comes from: {', '.join(pkgs)})" if pkgs else ""


def copy_libraries(root: Path, index: LibraryIndex, elfs: list[Path],
                   extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Copy the DT_NEEDED closure of ``elfs`` (files in ``root``) into /usr/lib.

    Returns soname -> package for every library copied. Fails naming the first
    soname no library package provides.
    """
    copied: dict[str, str] = {}
    todo: list[tuple[str, str]] = [(s, "dlopen") for s in extra]
    for f in elfs:
        info = elf_info(f)
        todo += [(s, str(f.relative_to(root))) for s in info.needed]
        if info.interpreter:
            todo.append((Path(info.interpreter).name, str(f.relative_to(root))))
    while todo:
        soname, user = todo.pop()
        if soname in copied:
            continue
        hit = index.find(soname)
        if hit is None:
            raise BuildError(
                f"{user} needs {soname}, which no package of LIBRARY_PACKAGES "
                f"(guest/spec.py) provides{_host_package_hint(soname)}"
            )
        pkg, src = hit
        dest = install(src, root, f"{LIBDIR}/{soname}", 0o755)
        copied[soname] = pkg
        ui.detail(f"lib {soname} from {pkg}")
        if is_elf(dest):
            todo += [(s, f"{LIBDIR}/{soname}") for s in elf_info(dest).needed]
    ld = root / "usr/lib64/ld-linux-x86-64.so.2"
    if "ld-linux-x86-64.so.2" in copied and not ld.is_symlink():
        ld.symlink_to("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return copied
