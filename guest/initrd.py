"""A staging tree -> a reproducible newc cpio archive, gzip-compressed.

Written in Python rather than with cpio(1) so that owners are root, times are
fixed, the order is sorted and device nodes (/dev/console) need no privileges:
the same tree always gives the same bytes.
"""

from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: Character devices every initramfs needs before devtmpfs is mounted.
DEVICE_NODES: dict[str, tuple[int, int, int]] = {
    "dev/console": (0o600, 5, 1),
    "dev/null": (0o666, 1, 3),
}
MTIME = 0


@dataclass(frozen=True)
class Entry:
    """One cpio member."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(e: Entry, ino: int) -> bytes:
    name = e.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, MTIME, len(e.data), 0, 0, e.rdev[0], e.rdev[1],
              len(name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def pack(entries: list[Entry]) -> bytes:
    """newc cpio archive of ``entries`` (in the order given) plus the trailer."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        out += _header(e, ino if e.name != "TRAILER!!!" else 0)
        out += e.data + b"\0" * (-len(e.data) % 4)
    return bytes(out)


def tree_entries(root: Path) -> list[Entry]:
    """Entries for every file, directory and symlink under ``root`` (sorted), plus devices."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, stat.S_IFLNK | 0o777, os.readlink(path).encode()))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, stat.S_IFDIR | stat.S_IMODE(st.st_mode)))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode),
                                     path.read_bytes()))
    have = {e.name for e in entries}
    for rel, (perm, major, minor) in DEVICE_NODES.items():
        parent = rel.rsplit("/", 1)[0]
        if parent not in have:
            entries.append(Entry(parent, stat.S_IFDIR | 0o755))
            have.add(parent)
        entries.append(Entry(rel, stat.S_IFCHR | perm, rdev=(major, minor)))
    # Parents before children: sort by path components.
    entries.sort(key=lambda e: e.name.split("/"))
    return entries


def compress(data: bytes, compression: str = "gzip") -> bytes:
    """Compress an archive the way the kernel can unpack it."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=MTIME)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression}")


def build(root: Path, compression: str = "gzip") -> tuple[bytes, int]:
    """(compressed archive, uncompressed size) of the tree at ``root``."""
    raw = pack(tree_entries(root))
    return compress(raw, compression), len(raw)
