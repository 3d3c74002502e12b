"""The guest as an image: an ext4 file system for a virtio-pmem device (mounted with
DAX, so the guest's files are never copied into guest RAM and every VM of the host
shares their pages) and the small first-stage initrd that mounts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from guest import initrd, kernel
from guest.tools import tool
from guest.ui import BuildError

IMAGE_NAME = "pykata-rootfs.img"
IMAGE_INITRD_NAME = "pykata-image-initrd.img"
# virtio-pmem memory is mapped in whole sections: keep the image a multiple of 128 MiB
ALIGN = 128 << 20
SPARE = 16 << 20  # free room in the file system beyond its files (inodes, directories)
STAGE1_MODULES = ["virtio_pci", "virtio_pmem", "nd_pmem", "overlay"]


def tree_bytes(root: Path) -> int:
    """Bytes of the files under root (as a file system would hold them, roughly)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += (path.stat().st_size + 4095) // 4096 * 4096
    return total


def image_size(root: Path) -> int:
    need = int(tree_bytes(root) * 1.15) + SPARE
    return (need + ALIGN - 1) // ALIGN * ALIGN


def build_image(root: Path, dest: Path) -> int:
    """mkfs.ext4 -d: the tree as an ext4 image (4 KiB blocks, as DAX needs; no journal:
    it is mounted read-only). Returns its size."""
    size = image_size(root)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as out:
        out.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1"}  # reproducible timestamps
    done = subprocess.run(
        [tool("mkfs.ext4"), "-q", "-F", "-b", "4096", "-O", "^has_journal", "-L", "pykata",
         "-U", "clear", "-E", "root_owner=0:0,hash_seed=6b617461-7079-6b61-7461-707974686f6e",
         "-d", str(root), str(tmp)],
        capture_output=True, text=True, env=env, check=False,
    )
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"mkfs.ext4 failed: {done.stderr.strip()}")
    os.replace(tmp, dest)
    return size


def build_stage1(kroot: Path | None, busybox: Path, init_script: Path) -> bytes:
    """The first-stage initrd (cpio): busybox, the modules that reach virtio-pmem, /init.

    ``kroot``: the unpacked kernel package whose modules to take; None for a kernel
    that has them built in (then the load list is empty)."""
    with tempfile.TemporaryDirectory(prefix="pykata-stage1-") as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "dev", "etc/pykata", "usr/lib"):
            (root / d).mkdir(parents=True)
        (root / "lib").symlink_to("usr/lib")  # merged /usr, as in the image
        shutil.copy2(busybox, root / "bin" / "busybox")
        os.chmod(root / "bin" / "busybox", 0o755)
        shutil.copy2(init_script, root / "init")
        os.chmod(root / "init", 0o755)
        if kroot is None:
            kernel.no_modules(root, "etc/pykata/modules")
        else:
            kernel.stage_modules(kroot, root, STAGE1_MODULES, "etc/pykata/modules")
        return initrd.pack(initrd.tree_entries(root))
