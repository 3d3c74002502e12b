"""vhost-device-vsock for one sandbox: the daemon behind QEMU's vhost-user-vsock-pci.

The guest gets a real virtio-vsock device; the host reaches the guest's ports through
the daemon's Unix socket (hybrid vsock, shim.hybrid_vsock). One daemon per VM, started
before QEMU (QEMU connects to its vhost-user socket) and ended after it (it serves the
next QEMU when one hangs up, so it never leaves by itself).

Confined: a network namespace of its own (it speaks only Unix sockets, which are found
by path), no capabilities (an empty bounding set), no_new_privs. It maps guest RAM, so
it counts in the pod's cgroup like QEMU: it is born in it.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import structlog

from shim.vmm.child import ChildProcess
from shim.vmm.errors import VhostVsockError
from shim.vmm.qemu import tail

log = structlog.get_logger(__name__)

# each VM has a daemon of its own, so the guest's CID is private to it (3: the first
# one that is not reserved)
GUEST_CID = 3
CONFINEMENT = "own netns, no capabilities, no_new_privs"


def daemon_argv(path: str, backend_socket: Path, uds: Path, cid: int = GUEST_CID) -> list[str]:
    """The daemon's own command line (vhost-device-vsock 0.3 option names)."""
    return [path, f"--guest-cid={cid}", f"--socket={backend_socket}", f"--uds-path={uds}"]


def confined(argv: list[str]) -> list[str]:
    """argv run in a new network namespace with every capability dropped.

    unshare (for --net alone) and setpriv exec without forking: the pid is the daemon's."""
    unshare = shutil.which("unshare") or "unshare"
    setpriv = shutil.which("setpriv") or "setpriv"
    return [unshare, "--net", "--", setpriv, "--no-new-privs", "--inh-caps=-all",
            "--bounding-set=-all", "--", *argv]


async def _wait_sockets(
    child: ChildProcess, sockets: tuple[Path, ...], log_path: Path, timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(path.exists() for path in sockets):
        if child.exited.done():
            raise VhostVsockError(
                f"vhost-device-vsock exited with status {child.returncode} before creating "
                f"its sockets:\n{tail(log_path)}", exit_code=child.returncode)
        if loop.time() >= deadline:
            raise VhostVsockError(
                f"vhost-device-vsock did not create {' and '.join(map(str, sockets))} within "
                f"{timeout:g}s:\n{tail(log_path)}")
        await asyncio.sleep(0.005)


def launch(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the daemon in a session of its own, its output appended to log_path."""
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)


async def start(
    path: str,
    backend_socket: Path,
    uds: Path,
    *,
    log_path: Path,
    timeout: float = 10.0,
) -> ChildProcess:
    """Start vhost-device-vsock and wait until both its sockets exist; VhostVsockError
    (with its log) if it is missing, dies or is too slow."""
    if not Path(path).is_file():
        raise VhostVsockError(
            f"vhost-device-vsock not found at {path} (run `pykata-image host-vhost-vsock`, "
            f"or set agent_transport = \"serial\" under [hypervisor.qemu])")
    for stale in (backend_socket, uds):
        stale.unlink(missing_ok=True)
    argv = daemon_argv(path, backend_socket, uds)
    child = ChildProcess(launch(confined(argv), log_path), "vhost-vsock")
    try:
        await _wait_sockets(child, (backend_socket, uds), log_path, timeout)
    except BaseException:  # dead, too slow, or the start was cancelled: never left behind
        if not child.exited.done():
            child.send_signal(signal.SIGKILL)
            await asyncio.shield(child.exited)
        child.close()
        raise
    log.debug("vhost-device-vsock ready", pid=child.pid, uds=str(uds), argv=argv[1:])
    return child
