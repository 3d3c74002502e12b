"""Just enough ELF reading to follow shared library dependencies (no binutils)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_SHT_DYNAMIC = 6
_PT_INTERP = 3
_DT_NEEDED = 1


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader needs for one file."""

    needed: tuple[str, ...]
    interpreter: str | None


def is_elf(path: Path) -> bool:
    """True for a regular file that starts with the ELF magic."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_elf(data: bytes) -> ElfInfo:
    """DT_NEEDED entries and PT_INTERP of a 64-bit little-endian ELF image."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    needed: list[str] = []
    for _, sh_type, _, _, off, size, link, _, _, entsize in sections:
        if sh_type != _SHT_DYNAMIC:
            continue
        str_off = sections[link][4]
        for j in range(0, size, entsize or 16):
            tag, val = struct.unpack_from("<qQ", data, off + j)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", str_off + val)
                needed.append(data[str_off + val : end].decode())
    return ElfInfo(tuple(needed), interp)


def elf_info(path: Path) -> ElfInfo:
    """read_elf() of a file."""
    return read_elf(path.read_bytes())
