"""ttrpc client: many concurrent unary calls multiplexed over one connection."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from ttrpc.channel import Channel
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError
from ttrpc.framing import (
    MAX_MESSAGE_SIZE,
    MAX_STREAM_ID,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    oversized_message,
)
from ttrpc.pb.request_pb2 import KeyValue, Request, Response
from ttrpc.service import Metadata
from ttrpc.transport import open_pipe_pair, open_socket, open_unix

log = logging.getLogger("ttrpc")

# (service, method, seconds, code) after each call; see Client
Observer = Callable[[str, str, float, Code], None]


def encode_metadata(metadata: Metadata) -> list[KeyValue]:
    """Flatten metadata to KeyValue pairs, lower-casing keys as ttrpc does."""
    pairs: list[KeyValue] = []
    for key, value in metadata.items():
        key = key.lower()
        values: Sequence[str] = (value,) if isinstance(value, str) else value
        pairs.extend(KeyValue(key=key, value=item) for item in values)
    return pairs


class Client:
    """A ttrpc client on one connection.

    Build it with `await Client.connect(address)`, `Client.from_socket(sock)` or
    `Client.from_pipes(read_fd, write_fd)`. Calls may be made concurrently from
    any number of tasks; answers are matched to calls by stream id.

    `observer`, if given, is called after each `call` with (service, method,
    seconds, code): how long the call took and how it ended (OK, the peer's
    status, DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED). It must be quick and
    must not raise (an exception is logged and dropped).
    """

    def __init__(self, metadata: Metadata | None = None, observer: Observer | None = None) -> None:
        self.observer = observer  # may be replaced at any time
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 1
        self._closed_reason: str | None = None
        self._default_metadata = encode_metadata(metadata or {})
        self._closed = asyncio.get_running_loop().create_future()
        self._channel = Channel(self._on_frame, self._on_oversized, self._on_closed)

    # -- construction -------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        metadata: Metadata | None = None,
        timeout: float | None = None,
        observer: Observer | None = None,
    ) -> Client:
        """Connect to `unix:///path`, a plain path, or `@abstract`."""
        client = cls(metadata, observer)
        await asyncio.wait_for(open_unix(address, lambda: client._channel), timeout)
        return client

    @classmethod
    async def from_socket(
        cls,
        sock: socket.socket,
        *,
        metadata: Metadata | None = None,
        observer: Observer | None = None,
    ) -> Client:
        """Use an already connected stream socket (AF_UNIX, AF_VSOCK, ...)."""
        client = cls(metadata, observer)
        await open_socket(sock, lambda: client._channel)
        return client

    @classmethod
    async def from_pipes(
        cls,
        read_fd: int,
        write_fd: int,
        *,
        metadata: Metadata | None = None,
        observer: Observer | None = None,
    ) -> Client:
        """Use two fds (pipes), or one character device fd passed twice."""
        client = cls(metadata, observer)
        await open_pipe_pair(read_fd, write_fd, lambda: client._channel)
        return client

    # -- calls --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._channel.closed

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """Make one unary call and return the answer's payload bytes.

        Raises TTRPCError with the peer's status, DEADLINE_EXCEEDED when timeout
        (seconds) passes, UNAVAILABLE when the connection is gone.
        """
        observer = self.observer
        if observer is None:
            return await self._call(service, method, payload, timeout, metadata)
        started = time.perf_counter()
        code = Code.OK
        try:
            return await self._call(service, method, payload, timeout, metadata)
        except TTRPCError as exc:
            code = Code.of(int(exc.code))
            raise
        except asyncio.CancelledError:
            code = Code.CANCELLED
            raise
        except Exception:
            code = Code.UNKNOWN
            raise
        finally:
            try:
                observer(service, method, time.perf_counter() - started, code)
            except Exception:
                log.exception("ttrpc client: call observer failed")

    async def _call(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> bytes:
        if self._channel.closed:
            raise TTRPCError(Code.UNAVAILABLE, self._closed_message())
        request = Request(service=service, method=method, payload=payload)
        if timeout is not None:
            if timeout <= 0:
                raise TTRPCError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
            request.timeout_nano = int(timeout * 1e9)
        if self._default_metadata:
            request.metadata.extend(self._default_metadata)
        if metadata:
            request.metadata.extend(encode_metadata(metadata))
        data = request.SerializeToString()
        if len(data) > MAX_MESSAGE_SIZE:
            raise TTRPCError(Code.RESOURCE_EXHAUSTED, oversized_message(len(data)))

        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise TTRPCError(Code.UNAVAILABLE, "ttrpc: stream ids exhausted, reconnect")
        self._next_id += 2
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = future
        try:
            try:
                self._channel.send(stream_id, TYPE_REQUEST, data)
                await self._channel.drain()
            except ConnectionError as exc:
                raise TTRPCError(Code.UNAVAILABLE, self._closed_message()) from exc
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise TTRPCError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        finally:
            self._pending.pop(stream_id, None)

    async def close(self, reason: str = "client closed") -> None:
        """Close the connection; calls still waiting fail with UNAVAILABLE (and `reason`)."""
        self._channel.close(reason)
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended, from either side."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- channel callbacks ---------------------------------------------------
    def _on_frame(self, stream_id: int, msg_type: int, flags: int, data: bytes) -> None:
        if msg_type != TYPE_RESPONSE:
            log.debug("ttrpc client: ignoring frame of type %d on stream %d", msg_type, stream_id)
            return
        future = self._pending.get(stream_id)
        if future is None or future.done():
            log.debug("ttrpc client: answer for unknown or finished stream %d", stream_id)
            return
        try:
            response = Response.FromString(data)
        except DecodeError as exc:
            future.set_exception(TTRPCError(Code.INTERNAL, f"malformed ttrpc response: {exc}"))
            return
        status = response.status
        if status.code:
            future.set_exception(TTRPCError(status.code, status.message, status.details))
        else:
            future.set_result(response.payload)

    def _on_oversized(self, stream_id: int, msg_type: int, length: int) -> None:
        future = self._pending.get(stream_id)
        if future is not None and not future.done():
            future.set_exception(TTRPCError(Code.RESOURCE_EXHAUSTED, oversized_message(length)))

    def _on_closed(self, reason: str | None) -> None:
        self._closed_reason = reason
        error = TTRPCError(Code.UNAVAILABLE, self._closed_message())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if not self._closed.done():
            self._closed.set_result(None)

    def _closed_message(self) -> str:
        if self._closed_reason:
            return f"ttrpc: connection closed: {self._closed_reason}"
        return "ttrpc: connection closed"
