"""Where the agent listens: a Unix socket (tests), vsock port 1024, or a virtio-serial port.

Without --listen: vsock when the VM has a vsock device (it has a local CID and
the port binds), else the virtio-serial port named agent.channel.0. Both are
looked for until they appear (modules may still be binding their devices).

A virtio-serial port is one stream that the host may close and open again: the
agent keeps the port open for its whole life (so bytes the host sends early are
not discarded, and the host sees no close) and serves each host session on
duplicates of that fd. When the host is away, reads end at once: the agent
tries again after a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pykata_common.contract import AGENT_PORT_NAME, AGENT_VSOCK_PORT

log = logging.getLogger("agent.channel")

VIRTIO_PORTS = "/sys/class/virtio-ports"
VSOCK_DEVICE = "/dev/vsock"
IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9
VMADDR_CID_ANY = 0xFFFFFFFF
RETRY = 0.05  # s between looks for a device, and between host sessions on a serial port
# A template's agent waits for a host that comes only in its clones, right after their
# restore: look more often (the first answer of a clone waits for it)
TEMPLATE_RETRY = 0.01
FIND_TIMEOUT = 30.0


def serial_port(name: str = AGENT_PORT_NAME, ports: str = VIRTIO_PORTS) -> str | None:
    """/dev/vportNpM of the virtio-serial port with that name, if there is one."""
    try:
        entries = os.listdir(ports)
    except OSError:
        return None
    for entry in sorted(entries):
        try:
            with open(os.path.join(ports, entry, "name")) as text:
                if text.read().strip() == name:
                    return f"/dev/{entry}"
        except OSError:
            continue
    return None


def vsock_cid() -> int | None:
    """The VM's own vsock CID, or None without a vsock device."""
    import fcntl
    import struct

    try:
        fd = os.open(VSOCK_DEVICE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        answer = fcntl.ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, struct.pack("I", 0))
    except OSError:
        return None
    finally:
        os.close(fd)
    cid = struct.unpack("I", answer)[0]
    return None if cid in (VMADDR_CID_ANY, 0, 1, 2) else cid


def vsock_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def detect(timeout: float = FIND_TIMEOUT) -> str:
    """The channel of this VM as a --listen address: vsock first, else the serial port."""
    deadline = time.monotonic() + timeout
    while True:
        if vsock_cid() is not None:
            try:
                # bind only: a listening probe would accept (then drop) a host's early
                # CONNECT; unbound again, the port refuses until the real listener is up
                with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
                    probe.bind((socket.VMADDR_CID_ANY, AGENT_VSOCK_PORT))
                return f"vsock://{AGENT_VSOCK_PORT}"
            except OSError as exc:
                log.debug("vsock: cannot bind port %d: %s", AGENT_VSOCK_PORT, exc)
        port = serial_port()
        if port is not None:
            return f"serial://{port}"
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no agent channel: neither a vsock device nor a virtio-serial port "
                f"named {AGENT_PORT_NAME} after {timeout:.0f}s"
            )
        await asyncio.sleep(RETRY)


class Serving(Protocol):
    """The server's connection to one host session (ttrpc's ServerConnection)."""

    closed: asyncio.Future[str | None]


async def serve_reconnecting(
    serve_fds: Callable[[int, int], Awaitable[Serving]],
    acquire: Callable[[], int],
    *,
    pause: float = RETRY,
) -> None:
    """Serve one host session after another on fds from acquire(); runs until cancelled."""
    while True:
        fd = acquire()
        try:
            connection = await serve_fds(fd, os.dup(fd))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            log.warning("agent channel: %s; retrying", exc)
            await asyncio.sleep(pause)
            continue
        began = time.monotonic()
        reason = await connection.closed
        if time.monotonic() - began > 0.5:
            log.info("agent channel: host session ended (%s); waiting for the next", reason)
        else:  # the host is not there: reads end at once
            await asyncio.sleep(pause)


async def serve(server: object, listen: str | None, *, pause: float = RETRY) -> None:
    """Serve the ttrpc server on the agent's channel until cancelled; `pause`: between
    looks for the host of a serial port."""
    if listen is None:
        listen = await detect()
    scheme, _, rest = listen.partition("://")
    if not rest:
        scheme, rest = "unix", listen
    if scheme == "unix":
        await server.serve_unix(rest)  # type: ignore[attr-defined]
    elif scheme == "vsock":
        await server.serve_listener(vsock_listener(int(rest or AGENT_VSOCK_PORT)))  # type: ignore[attr-defined]
    elif scheme == "serial":
        path = rest if rest.startswith("/") else serial_port(rest)
        if path is None:
            raise RuntimeError(f"no virtio-serial port named {rest!r}")
        keeper = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        log.info("listening on %s", listen)
        try:
            await serve_reconnecting(
                server.serve_pipes,  # type: ignore[attr-defined]
                lambda: os.dup(keeper),
                pause=pause,
            )
        finally:
            os.close(keeper)
        return
    else:
        raise ValueError(f"unknown --listen scheme {scheme!r} (unix, vsock, serial)")
    announce(listen)
    await asyncio.Event().wait()


def announce(listen: str) -> None:
    """Say on the console (stderr) where the agent listens: through the log at INFO, or
    as a bare line where the log level hides INFO. Over hybrid vsock the host dials only
    once it read VSOCK_LISTENING_NOTICE there."""
    if log.isEnabledFor(logging.INFO):
        log.info("listening on %s", listen)
    else:
        os.write(2, f"agent: listening on {listen}\n".encode())
