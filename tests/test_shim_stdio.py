"""Stdio copiers against real FIFOs: back-pressure, EOF by hang-up, CloseIO."""

import asyncio
import os

from shim.pod.stdio import InputCopier, OutputCopier


async def test_output_waits_for_a_slow_reader_and_delivers_everything(tmp_path):
    path = str(tmp_path / "out")
    os.mkfifo(path)
    chunks = [bytes([i]) * 65536 for i in range(8)] + [b""]

    async def read() -> bytes:
        return chunks.pop(0)

    copier = OutputCopier("stdout", path, read)
    copier.start()
    await asyncio.sleep(0.2)  # the pipe fills up: nobody reads yet
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    received = b""
    for _ in range(500):
        try:
            data = os.read(reader, 1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        if not data:
            break
        received += data
    os.close(reader)
    assert await copier.wait(5)
    assert received == b"".join(bytes([i]) * 65536 for i in range(8))


async def test_input_ends_when_containerd_closes_the_fifo(tmp_path):
    path = str(tmp_path / "in")
    os.mkfifo(path)
    written, closed = [], asyncio.Event()

    async def write(data: bytes) -> None:
        written.append(data)

    async def close() -> None:
        closed.set()

    copier = InputCopier(path, write, close)
    copier.start()
    await asyncio.sleep(0.1)
    assert not closed.is_set()  # no writer yet is not an EOF
    writer = os.open(path, os.O_WRONLY)
    os.write(writer, b"hello ")
    os.write(writer, b"guest\n")
    os.close(writer)
    await asyncio.wait_for(closed.wait(), 5)
    assert b"".join(written) == b"hello guest\n"


async def test_close_io_drains_then_closes(tmp_path):
    path = str(tmp_path / "in2")
    os.mkfifo(path)
    written, closed = [], asyncio.Event()

    async def write(data: bytes) -> None:
        written.append(data)

    async def close() -> None:
        closed.set()

    copier = InputCopier(path, write, close)
    copier.start()
    writer = os.open(path, os.O_WRONLY)  # containerd keeps its end open
    os.write(writer, b"last words")
    copier.close_input()
    await asyncio.wait_for(closed.wait(), 5)
    os.close(writer)
    assert b"".join(written) == b"last words"
