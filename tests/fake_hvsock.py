"""A fake hybrid vsock daemon: `CONNECT <port>` in, a scripted answer out, then (after an
OK) a ttrpc agent on the same stream.

In process (FakeHybridVsock) for the dialer's tests, or run as a script standing in for
vhost-device-vsock (`fake_hvsock.py MODE --guest-cid=3 --socket=... --uds-path=...`):
it holds QEMU's vhost-user connection and serves a fake agent behind `CONNECT 1024`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

OK = b"OK 1073741824\n"


class FakeHybridVsock:
    """Listens on `path`; answers each connection's first line with `reply` (None: hang
    up; b"": say nothing), then serves `server` on the stream after an OK."""

    def __init__(self, path: str, server=None, reply: bytes | None = OK,
                 stall: int = 0, answer_after: float = 0.0) -> None:
        from ttrpc.transport import listen_unix

        self.sock = listen_unix(path)
        self.server = server
        self.reply = reply
        self.stall = stall  # the first `stall` streams are answered OK, then never served
        self.answer_after = answer_after  # a slow guest: seconds before the answer
        # answers written into a socket the dialer had closed: what kills the real
        # daemon's worker thread (vhost-device-vsock 0.3 unwraps that write)
        self.answers_into_closed = 0
        self.requests: list[bytes] = []
        self.held: list[socket.socket] = []
        self.serving: set[asyncio.Future] = set()
        self.task = asyncio.ensure_future(self._run())

    async def _line(self, conn: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        line = b""
        while len(line) < 128 and not line.endswith(b"\n"):
            byte = await loop.sock_recv(conn, 1)
            if not byte:
                break
            line += byte
        return line

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        line = await self._line(conn)
        self.requests.append(line)
        if self.reply is None:
            conn.close()
            return
        if self.answer_after:
            await asyncio.sleep(self.answer_after)
        if self.reply:
            try:
                await loop.sock_sendall(conn, self.reply)
            except (BrokenPipeError, ConnectionResetError):
                self.answers_into_closed += 1
                conn.close()
                return
        if len(self.requests) <= self.stall:
            self.held.append(conn)
        elif self.server is not None and self.reply.startswith(b"OK ") and \
                self.reply.endswith(b"\n"):
            await self.server.serve_socket(conn)
        else:
            self.held.append(conn)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            task = asyncio.ensure_future(self._serve(conn))
            self.serving.add(task)
            task.add_done_callback(self.serving.discard)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.server is not None:
            await self.server.shutdown(grace=0.1)
        for conn in self.held:
            conn.close()
        self.sock.close()


def agent_server(version: str = "fake-hvsock"):
    """A ttrpc server answering Check and GetGuestDetails (reporting `version`): the
    least of an agent the shim's start needs."""
    from protos.kata import agent_pb2, health_pb2
    from ttrpc import Server

    class Agent:
        async def Check(self, request, context):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        async def GetGuestDetails(self, request, context):
            return agent_pb2.GuestDetailsResponse(
                agent_details=agent_pb2.AgentDetails(version=version))

    server = Server()
    server.register(health_pb2.DESCRIPTOR.services_by_name["Health"], Agent())
    server.register(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], Agent())
    return server


async def _daemon(mode: str, options: dict[str, str]) -> None:
    from ttrpc.transport import listen_unix

    backend = listen_unix(options["--socket"])  # QEMU's vhost-user connection
    # die-after-qemu: the guest never answers, and the daemon dies while the VM starts;
    # stall-first: the first stream is accepted and never served;
    # worker-panics: as the real one once its worker thread died: alive, never answering
    reply = b"" if mode in ("die-after-qemu", "worker-panics") else OK
    fake = FakeHybridVsock(options["--uds-path"], agent_server(), reply=reply,
                           stall=1 if mode == "stall-first" else 0)
    loop = asyncio.get_running_loop()
    qemu, _ = await loop.sock_accept(backend)
    if mode == "die-after-qemu":
        await asyncio.sleep(0.5)
        os._exit(7)
    if mode == "worker-panics":
        sys.stderr.write("thread 'vring_worker' panicked at src/vsock_conn.rs:238:64:\n"
                         "called `Result::unwrap()` on an `Err` value: BrokenPipe\n")
        sys.stderr.flush()
    await asyncio.Event().wait()  # like the real one: never leaves by itself
    qemu.close()
    await fake.close()


def main(argv: list[str]) -> int:
    mode, options = argv[0], dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    if mode == "exit":
        sys.stderr.write("vhost-device-vsock: could not create the listener\n")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    asyncio.run(_daemon(mode, options))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
