"""Hybrid vsock from the host: a Unix socket in front of the guest's vsock ports.

The daemon behind it (vhost-device-vsock here; Firecracker and Cloud Hypervisor serve
the same protocol) takes `CONNECT <port>\\n`, asks the guest, and answers
`OK <host port>\\n` once the guest accepted; from then on the stream is the guest
port's. Kata's name for such an address is `hvsock://<path>:<port>`.

Neither the daemon nor the guest is trusted: the answer is read a byte at a time (so
nothing after its newline is taken from the stream that follows), at most MAX_REPLY
bytes, and anything but `OK <digits>\\n` is refused.
"""

from __future__ import annotations

import asyncio
import re
import socket

SCHEME = "hvsock"
MAX_REPLY = 64
_REPLY = re.compile(rb"OK ([0-9]{1,10})\n")
MAX_PORT = 0xFFFFFFFF


class HandshakeError(ConnectionError):
    """The daemon hung up or answered something other than `OK <port>`."""


def parse_reply(line: bytes) -> int:
    """The host port of an `OK <port>\\n` answer; HandshakeError for anything else."""
    match = _REPLY.fullmatch(line)
    if match is None or int(match.group(1)) > MAX_PORT:
        shown = line[:MAX_REPLY].decode("ascii", "backslashreplace")
        raise HandshakeError(f"hybrid vsock: not an OK answer: {shown!r}")
    return int(match.group(1))


async def read_reply(sock: socket.socket, port: int) -> bytes:
    """One answer line (newline included), read a byte at a time, MAX_REPLY at most."""
    loop = asyncio.get_running_loop()
    line = bytearray()
    while len(line) < MAX_REPLY:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            raise HandshakeError(
                f"hybrid vsock: closed before answering CONNECT {port} "
                f"(nothing listens on the guest's port {port} yet?)"
                + (f"; got {bytes(line)!r}" if line else ""))
        line += byte
        if byte == b"\n":
            return bytes(line)
    raise HandshakeError(f"hybrid vsock: no answer line within {MAX_REPLY} bytes")


async def _handshake(sock: socket.socket, path: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, path)
    await loop.sock_sendall(sock, f"CONNECT {port}\n".encode())
    return parse_reply(await read_reply(sock, port))


async def connect(path: str, port: int, timeout: float) -> socket.socket:
    """A stream to the guest's vsock `port` through the hybrid vsock socket at `path`.

    Raises HandshakeError (a ConnectionError), OSError or TimeoutError (the whole
    exchange has `timeout` seconds)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(_handshake(sock, path, port), timeout)
    except BaseException:
        sock.close()
        raise
    return sock
