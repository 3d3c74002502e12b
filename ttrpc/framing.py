"""ttrpc frames: a 10-byte header followed by at most 4 MiB of data.

Header layout (big-endian): data length u32, stream id u32, type u8, flags u8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ttrpc.errors import ProtocolError

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_MESSAGE_SIZE = 4 << 20

TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
KNOWN_TYPES = frozenset((TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA))

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4

MAX_STREAM_ID = (1 << 32) - 1
_VIEW_THRESHOLD = 16 * 1024


def oversized_message(length: int) -> str:
    """The status message ttrpc peers use for a frame that is too large."""
    return f"message length {length} exceed maximum message size of {MAX_MESSAGE_SIZE}"


def encode_header(length: int, stream_id: int, msg_type: int, flags: int = 0) -> bytes:
    """Pack a frame header."""
    return HEADER.pack(length, stream_id, msg_type, flags)


def encode_frame(stream_id: int, msg_type: int, data: bytes, flags: int = 0) -> bytes:
    """A whole frame as one bytes object (header + data)."""
    return HEADER.pack(len(data), stream_id, msg_type, flags) + data


# on_frame(stream_id, msg_type, flags, data); on_oversized(stream_id, msg_type, length)
FrameCallback = Callable[[int, int, int, bytes], None]
OversizedCallback = Callable[[int, int, int], None]


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, it calls back per frame.

    A frame whose length exceeds MAX_MESSAGE_SIZE is skipped without being
    buffered and reported through on_oversized, so the stream stays in sync.
    An unknown frame type raises ProtocolError: after it nothing can be trusted.
    """

    __slots__ = ("_buffer", "_on_frame", "_on_oversized", "_skip")

    def __init__(self, on_frame: FrameCallback, on_oversized: OversizedCallback) -> None:
        self._buffer = bytearray()
        self._skip = 0
        self._on_frame = on_frame
        self._on_oversized = on_oversized

    @property
    def mid_frame(self) -> bool:
        """True when bytes of an unfinished frame are pending."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, data: bytes) -> None:
        """Consume data; calls back for every complete frame in it."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        buffer = self._buffer
        buffer += data
        end = len(buffer)
        pos = 0
        unpack = HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            length, stream_id, msg_type, flags = unpack(buffer, pos)
            if msg_type not in KNOWN_TYPES:
                del buffer[:]
                raise ProtocolError(f"unknown frame type {msg_type} on stream {stream_id}")
            if length > MAX_MESSAGE_SIZE:
                available = end - pos - HEADER_SIZE
                self._on_oversized(stream_id, msg_type, length)
                if available >= length:
                    pos += HEADER_SIZE + length
                    continue
                self._skip = length - available
                pos = end
                break
            start = pos + HEADER_SIZE
            if end - start < length:
                break
            pos = start + length
            if length < _VIEW_THRESHOLD:
                data = bytes(buffer[start:pos])
            else:  # one copy instead of two for large frames
                with memoryview(buffer) as view:
                    data = bytes(view[start:pos])
            self._on_frame(stream_id, msg_type, flags, data)
        if pos:
            del buffer[:pos]
