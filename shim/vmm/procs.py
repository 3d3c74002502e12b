"""Process helpers: /proc start times (the recycled-pid guard), exit waits, seccomp state.

Stdlib only: `kill_from_state` runs in the short-lived `delete` process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


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


SECCOMP_MODES = {0: "off", 1: "strict", 2: "filter"}


@dataclass(frozen=True)
class Confinement:
    """What /proc/<pid>/status says about a process's seccomp state."""

    seccomp: int | None  # 0 off, 1 strict, 2 filter; None: the kernel does not say
    no_new_privs: bool | None

    @property
    def seccomp_name(self) -> str:
        return SECCOMP_MODES.get(self.seccomp, "unknown") if self.seccomp is not None else "unknown"

    @property
    def filtered(self) -> bool:
        return self.seccomp == 2

    def __str__(self) -> str:
        nnp = "unknown" if self.no_new_privs is None else int(self.no_new_privs)
        return f"Seccomp: {self.seccomp_name}, NoNewPrivs: {nnp}"


def parse_status(text: str) -> dict[str, str]:
    """The `Key: value` lines of a /proc/<pid>/status text."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def confinement_from_status(status: dict[str, str]) -> Confinement:
    """Seccomp and NoNewPrivs from parsed status fields (None where absent or odd)."""

    def number(key: str) -> int | None:
        value = status.get(key, "")
        return int(value) if value.isdigit() else None

    nnp = number("NoNewPrivs")
    return Confinement(seccomp=number("Seccomp"), no_new_privs=None if nnp is None else nnp == 1)


def read_confinement(pid: int) -> Confinement | None:
    """The seccomp state of a running process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return confinement_from_status(parse_status(text))


def children(pid: int) -> list[int]:
    """The pids of a process's children (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def namespace(pid: int | str, kind: str) -> str | None:
    """The namespace id (e.g. 'mnt:[4026531832]') of a process, or None if unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
