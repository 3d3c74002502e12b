"""virtiofsd for one sandbox: export the shared dir on <state>/vfs.sock."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import structlog

from shim.vmm.child import ChildProcess
from shim.vmm.errors import VirtiofsdError
from shim.vmm.qemu import tail

log = structlog.get_logger(__name__)


def virtiofsd_argv(
    path: str, socket: Path, shared_dir: Path, cache: str, extra: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The virtiofsd command line (Rust virtiofsd >= 1.x option names)."""
    return [
        path,
        f"--socket-path={socket}",
        f"--shared-dir={shared_dir}",
        f"--cache={cache}",
        *extra,
    ]


async def start_virtiofsd(
    path: str,
    socket: Path,
    shared_dir: Path,
    *,
    cache: str = "auto",
    extra: list[str] | tuple[str, ...] = (),
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
    argv = virtiofsd_argv(path, socket, shared_dir, cache, extra)
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    child = ChildProcess(popen, "virtiofsd")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not socket.exists():
        if child.exited.done():
            child.close()
            raise VirtiofsdError(
                f"virtiofsd exited with status {child.returncode} before "
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
    log.debug("virtiofsd ready", pid=child.pid, socket=str(socket), shared_dir=str(shared_dir))
    return child
