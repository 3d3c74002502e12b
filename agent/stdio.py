"""A process's stdio as the agent holds it: pipes or a pty master, buffered for the shim.

Output is read by the event loop into a bounded buffer. When the buffer is full
the agent stops reading, the pipe fills and the process blocks in write():
back-pressure instead of unbounded memory. ReadStdout/ReadStderr take from the
buffer, waiting until there is data or EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket

DEFAULT_LIMIT = 1 << 20
READ_CHUNK = 64 * 1024


class OutputBuffer:
    """Bytes read from one fd (pipe or pty master), waiting for ReadStdout/ReadStderr."""

    def __init__(self, fd: int, limit: int = DEFAULT_LIMIT) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._limit = max(limit, READ_CHUNK)
        self._buffer = bytearray()
        self._eof = False
        self._reading = False
        self._changed = asyncio.Event()
        os.set_blocking(fd, False)
        self._start_reading()

    @property
    def eof(self) -> bool:
        """True once the writers are gone and every byte has been taken."""
        return self._eof and not self._buffer

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _start_reading(self) -> None:
        if not self._reading and not self._eof:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the pty's last slave closed; anything else ends it too
            data = b""
        if data:
            self._buffer += data
            if len(self._buffer) >= self._limit:
                self._stop_reading()
        else:
            self._finish()
        self._changed.set()

    def _finish(self) -> None:
        self._stop_reading()
        if not self._eof:
            self._eof = True
            os.close(self._fd)

    async def read(self, size: int) -> bytes:
        """Up to size bytes; waits while the buffer is empty; b"" means EOF."""
        while not self._buffer and not self._eof:
            self._changed.clear()
            await self._changed.wait()
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        if len(self._buffer) < self._limit // 2:
            self._start_reading()
        return chunk

    def close(self) -> None:
        """Drop the stream: pending and future reads see EOF."""
        self._finish()
        self._buffer.clear()
        self._changed.set()


class InputPipe:
    """The write end of a process's stdin (a pipe, or a dup of the pty master)."""

    def __init__(self, fd: int, *, terminal: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = fd
        self._terminal = terminal
        self._lock = asyncio.Lock()
        os.set_blocking(fd, False)

    @property
    def closed(self) -> bool:
        return self._fd is None

    async def write(self, data: bytes) -> int:
        """Write all of data, waiting while the pipe is full."""
        async with self._lock:
            view = memoryview(data)
            while view:
                if self._fd is None:
                    raise BrokenPipeError(errno.EPIPE, "stdin is closed")
                try:
                    written = os.write(self._fd, view)
                except (BlockingIOError, InterruptedError):
                    await self._writable()
                    continue
                view = view[written:]
            return len(data)

    async def _writable(self) -> None:
        assert self._fd is not None
        ready = self._loop.create_future()
        self._loop.add_writer(self._fd, ready.set_result, None)
        try:
            await ready
        finally:
            if self._fd is not None:
                self._loop.remove_writer(self._fd)

    async def close(self) -> None:
        """End of input: close the pipe; on a terminal send the EOF character (^D)."""
        if self._fd is None:
            return
        if self._terminal:
            with contextlib.suppress(OSError):
                await self.write(b"\x04")
        self.discard()

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class PipeSet:
    """Pipes for a non-terminal process: the child's ends and the agent's ends.

    (Plain classes here, not dataclasses: see agent.children.Completed.)
    """

    __slots__ = ("child", "stderr", "stdin", "stdout")

    def __init__(self, child: tuple[int, int, int], stdin: int, stdout: int, stderr: int) -> None:
        self.child = child
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    @classmethod
    def new(cls) -> PipeSet:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        return cls((in_r, out_w, err_w), in_w, out_r, err_r)

    def close_child(self) -> None:
        """After the spawn: only the child may keep these, or EOF never comes."""
        for fd in self.child:
            os.close(fd)
        self.child = (-1, -1, -1)

    def close_all(self) -> None:
        for fd in (*self.child, self.stdin, self.stdout, self.stderr):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


_console_ids = itertools.count(1)


class ConsoleSocket:
    """A Unix socket runc sends a terminal's pty master to (`--console-socket`)."""

    __slots__ = ("path", "sock")

    def __init__(self, path: str, sock: socket.socket) -> None:
        self.path = path
        self.sock = sock

    @classmethod
    def listen(cls, folder: str) -> ConsoleSocket:
        # Short, unique names: a socket path must fit in 108 bytes.
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, f"c{os.getpid()}-{next(_console_ids)}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(path)
        sock.listen(1)
        sock.setblocking(False)
        return cls(path, sock)

    async def receive(self, timeout: float = 30.0) -> int:
        """The pty master fd runc passed with SCM_RIGHTS."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            conn, _ = await loop.sock_accept(self.sock)
            with conn:
                while True:
                    try:
                        _, fds, _, _ = socket.recv_fds(conn, 4096, 4)
                    except (BlockingIOError, InterruptedError):
                        ready = loop.create_future()
                        loop.add_reader(conn.fileno(), ready.set_result, None)
                        try:
                            await ready
                        finally:
                            loop.remove_reader(conn.fileno())
                        continue
                    if not fds:
                        raise ConnectionError("console socket closed without a pty")
                    for extra in fds[1:]:
                        os.close(extra)
                    os.set_inheritable(fds[0], False)
                    return fds[0]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def resize(master_fd: int, rows: int, columns: int) -> None:
    """Set a pty's window size (TIOCSWINSZ)."""
    import fcntl
    import struct
    import termios

    fcntl.ioctl(master_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
