"""Copying a process's stdio between containerd's FIFOs and the agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import structlog

import ttrpc
from shim.agent_client import BadAnswer

log = structlog.get_logger(__name__)
CHUNK = 64 * 1024

ReadChunk = Callable[[], Awaitable[bytes]]
WriteChunk = Callable[[bytes], Awaitable[None]]
CloseInput = Callable[[], Awaitable[None]]


def _open_fifo(path: str, flags: int) -> int:
    # Non-blocking: containerd may open its end after us. Output FIFOs are held
    # read-write so writes never fail with ENXIO/EPIPE before the reader comes.
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


class OutputCopier:
    """Pulls a stream from the agent (ReadStdout/ReadStderr) into a FIFO until EOF."""

    def __init__(self, name: str, path: str, read: ReadChunk) -> None:
        self.name = name
        self.path = path
        self._read = read
        self._fd = _open_fifo(path, os.O_RDWR) if path else -1
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                try:
                    data = await self._read()
                except ttrpc.TTRPCError as exc:
                    # the agent reports the end of a stream as an error (as Kata's does)
                    log.debug("output stream ended", stream=self.name, reason=exc.message)
                    return
                if not data:
                    return
                if self._fd >= 0:
                    await self._write_all(data)
        finally:
            self.close()

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
                view = view[written:]
            except BlockingIOError:  # the reader is slow and the pipe full: wait for room
                await self._writable()
            except OSError as exc:
                log.warning("dropping output: FIFO write failed", stream=self.name, error=str(exc))
                return

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        room = loop.create_future()
        loop.add_writer(self._fd, room.set_result, None)
        try:
            await room
        finally:
            loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def wait(self, timeout: float) -> bool:
        """Wait for EOF; False when it did not come in time (the copy is then stopped)."""
        if self.task is None:
            return True
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            return False
        return True


class InputCopier:
    """Pushes what containerd writes into the stdin FIFO to the agent (WriteStdin).

    Input ends when containerd's writer closes the FIFO (what `ctr run` does at
    EOF) or when CloseIO asks; then the process's stdin is closed in the guest.
    The FIFO is opened read-only and non-blocking: Linux reports it readable
    only once a writer came and went (or wrote), so an early open sees no
    false EOF before containerd connects.
    """

    def __init__(self, path: str, write: WriteChunk, close_input: CloseInput) -> None:
        self.path = path
        self._write = write
        self._close_input = close_input
        self._fd = _open_fifo(path, os.O_RDONLY)
        self._readable = asyncio.Event()
        self._closing = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._readable.set)
        self.task = loop.create_task(self._run())

    def close_input(self) -> None:
        """CloseIO: send what is buffered, then close stdin in the guest."""
        self._closing = True
        self._readable.set()

    async def _run(self) -> None:
        try:
            ended = False
            while not ended:
                await self._readable.wait()
                self._readable.clear()
                while True:
                    try:
                        data = os.read(self._fd, CHUNK)
                    except BlockingIOError:
                        break
                    if not data:
                        ended = True
                        break
                    await self._write(data)
                ended = ended or self._closing
            self._remove_reader()
            await self._close_input()
        except BadAnswer as exc:  # a guest that lies about what it took: stop feeding it
            log.warning("stdin copy stopped", reason=exc.message)
        except ttrpc.TTRPCError as exc:
            log.debug("stdin copy stopped", reason=exc.message)
        finally:
            self.stop()

    def _remove_reader(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)

    def stop(self) -> None:
        if self._fd >= 0:
            self._remove_reader()
            os.close(self._fd)
            self._fd = -1
        if (
            self.task is not None
            and not self.task.done()
            and self.task is not asyncio.current_task()
        ):
            self.task.cancel()
