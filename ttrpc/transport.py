"""Where ttrpc bytes travel: Unix sockets, inherited fds, any stream socket, pipe pairs."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from ttrpc.channel import Channel, _WriteSide

UNIX_SCHEME = "unix://"
P = TypeVar("P", bound=asyncio.BaseProtocol)


def unix_path(address: str) -> str:
    """The filesystem path of a `unix:///path` URI or a plain path.

    A leading '@' (or `unix://@name`) names a Linux abstract socket.
    """
    if address.startswith(UNIX_SCHEME):
        address = address[len(UNIX_SCHEME) :]
    elif "://" in address:
        scheme = address.split("://", 1)[0]
        raise ValueError(f"unsupported ttrpc address scheme {scheme!r} in {address!r}")
    if not address:
        raise ValueError("empty ttrpc address")
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def require_same_uid(sock: socket.socket) -> bool:
    """Connection check: accept only peers running as our own uid (or root)."""
    try:
        _, uid, _ = peer_credentials(sock)
    except OSError:
        return False
    return uid in (os.geteuid(), 0)


def listen_unix(path: str, mode: int = 0o600, backlog: int = 128) -> socket.socket:
    """Bind and listen on a Unix socket path, replacing a stale socket file."""
    real = unix_path(path)
    if not real.startswith("\0"):
        try:
            if os.path.exists(real) and not os.path.isdir(real):
                os.unlink(real)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(real)
        if not real.startswith("\0"):
            os.chmod(real, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def listener_from_fd(fd: int) -> socket.socket:
    """Adopt an inherited listening socket (containerd hands shims fd 3)."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def open_unix(address: str, factory: Callable[[], Channel]) -> Channel:
    """Connect to a Unix socket address and attach a channel."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(factory, unix_path(address))
    return channel


async def open_socket(sock: socket.socket, factory: Callable[[], Channel]) -> Channel:
    """Attach a channel to an already connected stream socket (vsock, unix...)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    _, channel = await loop.connect_accepted_socket(factory, sock=sock)
    return channel


async def open_pipe_pair(read_fd: int, write_fd: int, factory: Callable[[], Channel]) -> Channel:
    """Attach a channel to two fds: pipes or a character device opened twice.

    A virtio-serial port in the guest (/dev/vportNpM) is such a device: pass the
    same fd for both sides, it is duplicated.
    """
    loop = asyncio.get_running_loop()
    if read_fd == write_fd:
        write_fd = os.dup(write_fd)
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    reader = os.fdopen(read_fd, "rb", buffering=0, closefd=True)
    writer = os.fdopen(write_fd, "wb", buffering=0, closefd=True)
    channel = factory()
    try:
        await loop.connect_read_pipe(lambda: channel, reader)
        await loop.connect_write_pipe(lambda: _WriteSide(channel), writer)
    except BaseException:
        channel.close("could not attach pipe pair")
        reader.close()
        writer.close()
        raise
    return channel
