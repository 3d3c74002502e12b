"""Staging tree helpers: merged /usr, symlinks inside a package, ELF closure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest import elf, rootfs
from guest.ui import BuildError

HOST_LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
HOST_LD = Path("/lib64/ld-linux-x86-64.so.2")


def test_usr_path() -> None:
    assert rootfs.usr_path("bin/busybox") == "usr/bin/busybox"
    libc = "lib/x86_64-linux-gnu/libc.so.6"
    assert rootfs.usr_path("/" + libc) == "usr/" + libc
    assert rootfs.usr_path("usr/sbin/runc") == "usr/sbin/runc"
    assert rootfs.usr_path("etc/passwd") == "etc/passwd"
    assert rootfs.usr_path("sbin") == "usr/sbin"


def test_absolute_symlinks_resolve_inside_the_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (pkg / "lib64").mkdir()
    (pkg / "lib/x86_64-linux-gnu/ld.so.2").write_text("loader")
    (pkg / "lib64/ld.so.2").symlink_to("/lib/x86_64-linux-gnu/ld.so.2")
    (pkg / "lib64/dangling.so").symlink_to("/nowhere/x.so")
    assert rootfs.resolve_within(pkg, pkg / "lib64/ld.so.2") == pkg / "lib/x86_64-linux-gnu/ld.so.2"
    assert rootfs.resolve_within(pkg, pkg / "lib64/dangling.so") is None


def test_base_layout(tmp_path: Path) -> None:
    rootfs.base_layout(tmp_path)
    assert (tmp_path / "bin").readlink() == Path("usr/bin")
    assert (tmp_path / "lib64").readlink() == Path("usr/lib64")
    assert "root:x:0:0" in (tmp_path / "etc/passwd").read_text()
    assert (tmp_path / "tmp").stat().st_mode & 0o1777 == 0o1777


def test_read_elf_of_a_host_binary() -> None:
    info = elf.elf_info(Path(shutil.which("true") or "/bin/true"))
    assert "libc.so.6" in info.needed
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    with pytest.raises(ValueError):
        elf.read_elf(b"#!/bin/sh\n" + b"\0" * 64)


@pytest.mark.skipif(not HOST_LIBC.exists(), reason="no glibc at the Debian path")
def test_library_closure(tmp_path: Path) -> None:
    pkg = tmp_path / "libc6"
    (pkg / "lib/x86_64-linux-gnu").mkdir(parents=True)
    for lib in (HOST_LIBC, HOST_LD.resolve()):
        shutil.copy(lib, pkg / "lib/x86_64-linux-gnu" / lib.name)
    if HOST_LD.resolve().name != HOST_LD.name:
        (pkg / "lib/x86_64-linux-gnu" / HOST_LD.name).symlink_to(HOST_LD.resolve().name)
    root = tmp_path / "root"
    rootfs.base_layout(root)
    true = rootfs.install(Path(shutil.which("true") or "/bin/true"), root, "bin/true")
    copied = rootfs.copy_libraries(root, rootfs.LibraryIndex({"libc6": pkg}), [true])
    assert copied == {"libc.so.6": "libc6", "ld-linux-x86-64.so.2": "libc6"}
    assert (root / "usr/lib/x86_64-linux-gnu/libc.so.6").is_file()
    assert (root / "lib64/ld-linux-x86-64.so.2").resolve().is_file()


def test_missing_library_is_named(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rootfs.base_layout(root)
    true = rootfs.install(Path(shutil.which("true") or "/bin/true"), root, "bin/true")
    with pytest.raises(BuildError, match=r"needs (libc\.so\.6|ld-linux).*LIBRARY_PACKAGES"):
        rootfs.copy_libraries(root, rootfs.LibraryIndex({}), [true])
