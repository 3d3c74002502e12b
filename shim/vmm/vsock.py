"""Guest CIDs for vhost-vsock: claim a free one on an open /dev/vhost-vsock (as Kata does)."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import Callable

VHOST_VSOCK_DEV = "/dev/vhost-vsock"
# _IOW(VHOST_VIRTIO=0xAF, 0x60, __u64)
VHOST_VSOCK_SET_GUEST_CID = 0x4008AF60
FIRST_CID = 3  # 0-2 are reserved (hypervisor, local, host)
MAX_CID = 0xFFFFFFFF - 1  # U32_MAX is VMADDR_CID_ANY


def vsock_available(dev: str = VHOST_VSOCK_DEV) -> bool:
    """True if the host side of vsock can be used (the device node exists)."""
    return os.path.exists(dev)


def claim_cid(
    fd: int,
    *,
    start: int | None = None,
    attempts: int = 64,
    ioctl: Callable[[int, int, bytes], object] = fcntl.ioctl,
) -> int:
    """Set a free guest CID on a /dev/vhost-vsock fd, trying upwards from `start`.

    The fd then holds the CID; QEMU gets it as `vhostfd=` so nobody can take it
    between our check and QEMU's start.
    """
    cid = start if start is not None else random.randint(FIRST_CID, MAX_CID)
    for _ in range(attempts):
        if cid < FIRST_CID or cid > MAX_CID:
            cid = FIRST_CID
        try:
            ioctl(fd, VHOST_VSOCK_SET_GUEST_CID, cid.to_bytes(8, "little"))
            return cid
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
        cid += 1
    raise OSError(errno.EADDRINUSE, f"no free vsock CID after {attempts} tries")


def open_vhost_vsock(cid: int | None = None, dev: str = VHOST_VSOCK_DEV) -> tuple[int, int]:
    """(fd, cid): an open vhost-vsock device holding a free (or the given) CID."""
    fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    try:
        got = claim_cid(fd, start=cid, attempts=1 if cid is not None else 64)
    except BaseException:
        os.close(fd)
        raise
    return fd, got
