"""virtiofsd for one sandbox: export the shared dir on <state>/vfs.sock."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import structlog

from shim.vmm.child import ChildProcess
from shim.vmm.errors import VirtiofsdError
from shim.vmm.qemu import tail

log = structlog.get_logger(__name__)


def seccomp_killed(status: int | None) -> bool:
    """Whether an exit status says virtiofsd's own seccomp filter killed it (SIGSYS).

    With --sandbox=namespace the process we started is a parent that exits with
    its child's signal as a byte (256 - signal)."""
    return status in (-signal.SIGSYS, 256 - signal.SIGSYS)


def exit_reason(status: int | None) -> str:
    """`status N`, with a hint when it was a seccomp kill."""
    hint = " (SIGSYS: killed by its seccomp filter, see virtiofsd.log)"
    return f"status {status}" + (hint if seccomp_killed(status) else "")


def option_value(args: Sequence[str], name: str) -> str | None:
    """The last value of a long option (`--name=value` or `--name value`) in `args`."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(args):
            value = args[i + 1]
    return value


def virtiofsd_argv(
    path: str,
    socket: Path,
    shared_dir: Path,
    cache: str,
    extra: Sequence[str] = (),
    *,
    confinement: Sequence[str] = (),
) -> list[str]:
    """The virtiofsd command line (Rust virtiofsd >= 1.x option names).

    `confinement` (`--sandbox=...`, `--seccomp=...`) is the host probe's choice; an
    option that `extra` (the user's virtio_fs_extra_args) also sets is left out.
    """
    ours = [a for a in confinement if option_value(extra, a.split("=", 1)[0]) is None]
    return [
        path,
        f"--socket-path={socket}",
        f"--shared-dir={shared_dir}",
        f"--cache={cache}",
        *ours,
        *extra,
    ]


def launch(argv: Sequence[str], log_path: Path, mode: str = "ab") -> subprocess.Popen:
    """Start virtiofsd in a session of its own, its output appended to log_path."""
    with log_path.open(mode) as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )


async def start_virtiofsd(
    path: str,
    socket: Path,
    shared_dir: Path,
    *,
    cache: str = "auto",
    extra: Sequence[str] = (),
    confinement: Sequence[str] = (),
    log_path: Path,
    timeout: float = 10.0,
) -> ChildProcess:
    """Start virtiofsd and wait until its socket exists; raise VirtiofsdError if it dies."""
    if not Path(path).exists():
        raise VirtiofsdError(
            f"virtiofsd not found at {path} (run `python3 -m guest "
            f"host-virtiofsd`, or set shared_fs = none)"
        )
    if not shared_dir.is_dir():
        raise VirtiofsdError(f"shared dir {shared_dir} is not a directory")
    socket.unlink(missing_ok=True)
    argv = virtiofsd_argv(path, socket, shared_dir, cache, extra, confinement=confinement)
    child = ChildProcess(launch(argv, log_path), "virtiofsd")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not socket.exists():
        if child.exited.done():
            child.close()
            raise VirtiofsdError(
                f"virtiofsd exited with {exit_reason(child.returncode)} before "
                f"creating {socket}:\n{tail(log_path)}",
                exit_code=child.returncode,
            )
        if loop.time() >= deadline:
            await child.kill()
            child.close()
            raise VirtiofsdError(
                f"virtiofsd did not create {socket} within {timeout}s:\n{tail(log_path)}"
            )
        await asyncio.sleep(0.005)
    log.debug("virtiofsd ready", pid=child.pid, socket=str(socket), argv=argv[1:])
    return child
