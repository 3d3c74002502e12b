"""Launch QEMU as our child (no -daemonize), optionally inside the pod's netns."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import structlog

from shim.vmm.child import ChildProcess

log = structlog.get_logger(__name__)

NSENTER = "nsenter"
# terminal escapes and other control characters the firmware writes to the console
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|c)|[\x00-\x08\x0b-\x1f\x7f]")


def netns_prefix(netns: str | None) -> list[str]:
    """argv prefix that runs the command in a network namespace.

    nsenter execs without forking for --net alone, so the pid we get is QEMU's.
    (Python 3.11 has no os.setns, and a preexec_fn is unsafe in a threaded shim.)
    """
    if not netns:
        return []
    return [shutil.which(NSENTER) or NSENTER, f"--net={netns}", "--"]


def tail(path: Path, max_bytes: int = 4000, max_lines: int = 30) -> str:
    """The last lines of a log file ('' if absent)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = _ESCAPES.sub("", data.decode(errors="replace"))
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-max_lines:]).strip()


def launch(
    argv: list[str],
    *,
    stderr_path: Path,
    netns: str | None = None,
    pass_fds: list[int] | tuple[int, ...] = (),
) -> ChildProcess:
    """Start QEMU; stdout and stderr go to `stderr_path` so errors are never lost."""
    full = netns_prefix(netns) + argv
    with stderr_path.open("wb") as err:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            close_fds=True,
        )
    log.debug("qemu launched", pid=popen.pid, netns=netns, argv=" ".join(full))
    return ChildProcess(popen, "qemu")
