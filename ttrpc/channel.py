"""A framed byte stream over an asyncio transport: the part client and server share."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from ttrpc.errors import ProtocolError
from ttrpc.framing import HEADER, FrameDecoder

log = logging.getLogger("ttrpc")

# Below this size header and data are joined into one write; above it they are
# written separately so a large payload is not copied once more.
_JOIN_LIMIT = 64 * 1024


class Channel(asyncio.Protocol):
    """asyncio protocol that turns bytes into frames and frames into bytes.

    The owner (a client or a server connection) supplies the frame callbacks and
    learns about the end of the stream through on_closed(reason). The same
    object also serves as protocol for a pipe pair (see transport.py), where the
    read and write sides are two transports.
    """

    def __init__(
        self,
        on_frame: Callable[[int, int, int, bytes], None],
        on_oversized: Callable[[int, int, int], None],
        on_closed: Callable[[str | None], None],
    ) -> None:
        self._decoder = FrameDecoder(on_frame, on_oversized)
        self._on_closed = on_closed
        self.transport: asyncio.BaseTransport | None = None
        self.write_transport: asyncio.WriteTransport | None = None
        self._extra_transports: list[asyncio.BaseTransport] = []
        self._writable = asyncio.Event()
        self._writable.set()
        # Frames wait here while the transport is paused, so its own buffer (which
        # asyncio grows by copying) stays near the high-water mark.
        self._backlog: deque[bytes] = deque()
        self._closed = False

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            self.transport = transport
            if isinstance(transport, asyncio.WriteTransport):
                self.write_transport = transport
        else:
            self._extra_transports.append(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._decoder.feed(data)
        except ProtocolError as exc:
            log.warning("ttrpc: closing connection: %s", exc)
            self.close(str(exc))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        reason = None
        if exc is not None:
            reason = str(exc) or type(exc).__name__
        if self._decoder.mid_frame:
            reason = "peer closed the connection in the middle of a frame"
            log.warning("ttrpc: %s", reason)
        self._finish(reason)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        transport = self.write_transport
        backlog = self._backlog
        while backlog and transport is not None and not transport.is_closing():
            transport.write(backlog.popleft())
            if self._paused(transport):
                return
        self._writable.set()

    @staticmethod
    def _paused(transport: asyncio.WriteTransport) -> bool:
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    # -- ours ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, stream_id: int, msg_type: int, data: bytes, flags: int = 0) -> None:
        """Queue one frame for writing (never blocks; see drain())."""
        transport = self.write_transport
        if self._closed or transport is None or transport.is_closing():
            raise ConnectionResetError("ttrpc: connection closed")
        header = HEADER.pack(len(data), stream_id, msg_type, flags)
        if not self._writable.is_set():
            if len(data) <= _JOIN_LIMIT:
                self._backlog.append(header + data)
            else:
                self._backlog.extend((header, data))
        elif len(data) <= _JOIN_LIMIT:
            transport.write(header + data)
        else:
            transport.write(header)
            transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if not self._writable.is_set():
            await self._writable.wait()
            if self._closed:
                raise ConnectionResetError("ttrpc: connection closed")

    def close(self, reason: str | None = None) -> None:
        """Close every transport of this channel; on_closed runs once."""
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.clear()
        self._writable.set()
        for transport in (self.transport, *self._extra_transports):
            if transport is not None and not transport.is_closing():
                transport.close()
        self._on_closed(reason)


class _WriteSide(asyncio.Protocol):
    """Protocol for the write half of a pipe pair: forwards flow control."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._channel.write_transport = transport  # type: ignore[assignment]
        self._channel._extra_transports.append(transport)

    def pause_writing(self) -> None:
        self._channel.pause_writing()

    def resume_writing(self) -> None:
        self._channel.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel.connection_lost(exc)
