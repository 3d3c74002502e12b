"""CopyFile: the host writes a file into the guest piece by piece (no shared filesystem).

As in Kata: only under the run directory (/run/kata-containers); a directory
mode creates a directory, a symlink mode makes a link to the data; a regular
file is written at `offset` into PATH.tmp and renamed into place when its last
piece arrives.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ttrpc.codes import Code
from ttrpc.errors import TTRPCError


def copy_file(request: Any, base: str) -> None:
    base = os.path.realpath(base)
    path = os.path.normpath(request.path)
    if not os.path.isabs(path) or os.path.commonpath([base, path]) != base or path == base:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"CopyFile: {request.path!r} is not under {base}")
    parent = os.path.dirname(path)
    if os.path.commonpath([base, os.path.realpath(parent)]) != base:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"CopyFile: {request.path!r} leaves {base}")
    try:
        os.makedirs(parent, mode=request.dir_mode or 0o755, exist_ok=True)
        mode = request.file_mode
        if stat.S_ISDIR(mode):
            os.makedirs(path, mode=stat.S_IMODE(mode) or 0o755, exist_ok=True)
        elif stat.S_ISLNK(mode):
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(request.data.decode(), path)
        else:
            temporary = path + ".tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            if not request.offset:
                flags |= os.O_TRUNC
            fd = os.open(temporary, flags, 0o600)
            try:
                os.pwrite(fd, request.data, request.offset)
            finally:
                os.close(fd)
            if request.offset + len(request.data) >= request.file_size:
                os.chmod(temporary, stat.S_IMODE(mode) or 0o644)
                os.chown(temporary, request.uid, request.gid)
                os.replace(temporary, path)
            return
        if request.uid or request.gid:
            os.lchown(path, request.uid, request.gid)
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"CopyFile {request.path}: {exc.strerror}") from None
