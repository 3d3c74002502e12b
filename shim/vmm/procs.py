"""Process helpers: /proc start times (the recycled-pid guard) and async exit waits.

Stdlib only: `kill_from_state` runs in the short-lived `delete` process.
"""

from __future__ import annotations

import os
import signal
import time


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised comm), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), or None if gone."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def state(pid: int) -> str | None:
    """The one-letter process state (R, S, Z...), or None if gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def cmdline(pid: int) -> list[str]:
    """argv of a process ([] if gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_running(pid: int, started: int | None) -> bool:
    """True if `pid` is the process that started at `started` and is not a zombie."""
    fields = stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def wait_gone(pid: int, started: int | None, timeout: float) -> bool:
    """Poll until the process is gone (or a zombie); True if it went in time."""
    deadline = time.monotonic() + timeout
    while is_running(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def signal_if_same(pid: int, started: int | None, sig: int) -> bool:
    """Send `sig` only if `pid` is still the recorded process; True if sent."""
    if not is_running(pid, started):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def terminate(pid: int, started: int | None, grace: float) -> str:
    """SIGTERM, wait `grace`, then SIGKILL: 'gone', 'terminated' or 'killed'."""
    if not signal_if_same(pid, started, signal.SIGTERM):
        return "gone"
    if wait_gone(pid, started, grace):
        return "terminated"
    signal_if_same(pid, started, signal.SIGKILL)
    wait_gone(pid, started, 5.0)
    return "killed"
