"""The guest console log, capped: QEMU appends to it, the shim trims it.

QEMU copies everything the guest prints on its console into console.log in the
sandbox's state dir (a tmpfs under /run: host memory), and how much the guest
prints is the guest's choice. While a pod's VM runs, `keep_capped` checks the
file every CHECK_INTERVAL; once it is over CAP bytes it keeps the last KEEP, after
one line that says how much was dropped (MARK). QEMU opens the file O_APPEND
(`logappend=on`), so its next write lands at the new end, never past a hole.

Bounds and races, accepted: the file may pass CAP by what the guest writes in one
CHECK_INTERVAL; what QEMU writes between a trim's read and its truncate (a few
microseconds) is lost. The check starts once the VM answers: until then only the
host's own kernel and agent have run, never a workload.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)
CAP = 4 << 20
KEEP = CAP // 2
CHECK_INTERVAL = 0.5
LOG_INTERVAL = 60.0  # seconds between two "trimmed" lines of one log
MARK = b"[pykata: console log over %d bytes: %d earlier bytes dropped]\n"
MARK_PREFIX = MARK.split(b"%d")[0]


def trim(path: Path, *, cap: int | None = None, keep: int | None = None, dropped: int = 0) -> int:
    """Cut the log at `path` to its last `keep` bytes when it is over `cap`.

    `dropped`: bytes dropped by earlier trims (for the mark). Returns the bytes this
    trim dropped: 0 when the file is under the cap or absent."""
    cap = CAP if cap is None else cap
    keep = KEEP if keep is None else keep
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size <= cap:
            return 0
        tail = os.pread(fd, keep, size - keep)
        os.ftruncate(fd, 0)
        gone = size - len(tail)
        os.write(fd, MARK % (cap, dropped + gone) + tail)
        return gone
    finally:
        os.close(fd)


def resume_offset(head: bytes, size: int, keep: int | None = None) -> int:
    """Where a reader that was past the end of a trimmed log goes on: after the mark
    and the kept tail (what it had read already), or 0 when `head` (the file's first
    bytes) has no mark."""
    keep = KEEP if keep is None else keep
    end = head.find(b"\n")
    if not head.startswith(MARK_PREFIX) or end < 0:
        return 0
    return min(size, end + 1 + keep)


async def keep_capped(path: Path, interval: float | None = None) -> None:
    """Trim the log at `path` whenever it is over CAP, until cancelled."""
    dropped = 0
    failed = False
    logged = -LOG_INTERVAL
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CHECK_INTERVAL if interval is None else interval)
        try:
            if os.stat(path).st_size <= CAP:
                continue
            gone = trim(path, dropped=dropped)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if not failed:  # once: it would fail the same way every check
                log.warning("cannot trim the guest console log", path=str(path), error=str(exc))
            failed = True
            continue
        dropped += gone
        if gone and loop.time() - logged >= LOG_INTERVAL:
            logged = loop.time()
            log.info("guest console log trimmed", path=str(path), dropped=dropped, cap=CAP)
