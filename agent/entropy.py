"""ReseedRandomDev: mix entropy from the host into the guest's random pool.

Kata's agent writes the data to /dev/random, credits it with RNDADDTOENTCNT and
forces a reseed with RNDRESEEDCRNG. Here one RNDADDENTROPY ioctl on
/dev/random adds and credits the bytes together (8 bits per byte: they come
from the host's kernel RNG), then RNDRESEEDCRNG makes the kernel's CRNG use
them at once. Both need CAP_SYS_ADMIN (the agent, PID 1, has it). Where the
ioctl is refused (no privilege, not a random device), the bytes are written to
/dev/urandom instead: mixed into the pool, not credited.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

log = logging.getLogger("agent.entropy")

RANDOM = "/dev/random"
URANDOM = "/dev/urandom"
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EINVAL)


def reseed(data: bytes, random: str | None = None, urandom: str | None = None) -> str:
    """Add `data` to the pool; returns how: "ioctl" (credited) or "write" (mixed only)."""
    random, urandom = random or RANDOM, urandom or URANDOM
    if not data:
        raise TTRPCError(Code.INVALID_ARGUMENT, "missing entropy data")
    try:
        fd = os.open(random, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"open {random}: {exc.strerror}") from None
    try:
        # struct rand_pool_info: entropy_count (bits), buf_size (bytes), buf
        info = bytearray(struct.pack("ii", 8 * len(data), len(data)) + data)
        fcntl.ioctl(fd, RNDADDENTROPY, info, True)
        fcntl.ioctl(fd, RNDRESEEDCRNG, 0)
        return "ioctl"
    except OSError as exc:
        if exc.errno not in _REFUSED:
            raise TTRPCError(Code.INTERNAL, f"{random}: {exc.strerror}") from None
        log.info("RNDADDENTROPY refused (%s): writing to %s uncredited", exc.strerror, urandom)
    finally:
        os.close(fd)
    try:
        with open(urandom, "wb") as pool:
            pool.write(data)
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"write {urandom}: {exc.strerror}") from None
    return "write"
