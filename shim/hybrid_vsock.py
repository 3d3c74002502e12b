"""Hybrid vsock from the host: a Unix socket in front of the guest's vsock ports.

The daemon behind it (vhost-device-vsock here; Firecracker and Cloud Hypervisor serve
the same protocol) takes `CONNECT <port>\\n`, asks the guest, and answers
`OK <host port>\\n` once the guest accepted; from then on the stream is the guest
port's. Kata's name for such an address is `hvsock://<path>:<port>`.

Neither the daemon nor the guest is trusted: the answer is read a byte at a time (so
nothing after its newline is taken from the stream that follows), at most MAX_REPLY
bytes, and anything but `OK <digits>\\n` is refused.

A stream that has sent `CONNECT` is never closed before its answer: vhost-device-vsock
0.3 writes `OK` with an unwrap, so an `OK` that meets a closed socket (a dial given up
on, e.g. timed out while a slow guest accepted) kills its one worker thread, and from
then on no connection to that VM is ever answered. A handshake abandoned after its
`CONNECT` went out is left to finish in the background (`abandon`), then closed.
"""

from __future__ import annotations

import asyncio
import re
import socket

SCHEME = "hvsock"
MAX_REPLY = 64
_REPLY = re.compile(rb"OK ([0-9]{1,10})\n")
MAX_PORT = 0xFFFFFFFF
#: How long an abandoned handshake may wait for its answer before it is closed anyway.
ABANDON_WAIT = 60.0
_abandoned: set[asyncio.Task[None]] = set()


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


async def _finish_abandoned(sock: socket.socket, port: int) -> None:
    try:
        async with asyncio.timeout(ABANDON_WAIT):
            await read_reply(sock, port)
    except (OSError, TimeoutError, HandshakeError):
        pass
    finally:
        sock.close()


def abandon(sock: socket.socket, port: int) -> None:
    """Close `sock`, whose CONNECT went out, only once its answer came (or never will)."""
    task = asyncio.get_running_loop().create_task(_finish_abandoned(sock, port))
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


def abandoned() -> int:
    """Handshakes left to finish in the background (for tests and logs)."""
    return len(_abandoned)


async def connect(path: str, port: int, timeout: float) -> socket.socket:
    """A stream to the guest's vsock `port` through the hybrid vsock socket at `path`.

    Raises HandshakeError (a ConnectionError), OSError or TimeoutError (the whole
    exchange has `timeout` seconds). A timeout or a cancellation after CONNECT was
    sent leaves the socket to `abandon`."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sending = False
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, path)
            sending = True
            await loop.sock_sendall(sock, f"CONNECT {port}\n".encode())
            line = await read_reply(sock, port)
    except (TimeoutError, asyncio.CancelledError):
        if sending:
            abandon(sock, port)
        else:
            sock.close()
        raise
    except BaseException:
        sock.close()
        raise
    try:
        parse_reply(line)
    except HandshakeError:
        sock.close()
        raise
    return sock
