"""ttrpc server: typed handlers for services, served on any stream transport."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from ttrpc.channel import Channel
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError
from ttrpc.framing import (
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    oversized_message,
)
from ttrpc.pb.request_pb2 import Request, Response
from ttrpc.pb.status_pb2 import Status
from ttrpc.service import CallContext, Method, methods_of
from ttrpc.transport import listen_unix, listener_from_fd, open_pipe_pair, open_socket, unix_path

log = logging.getLogger("ttrpc")

Authorizer = Callable[[socket.socket], bool]
# (service, method, seconds, code) after each call; see Server
Observer = Callable[[str, str, float, Code], None]


def status_response(code: Code, message: str) -> bytes:
    """A serialized Response that carries only a status."""
    return Response(status=Status(code=int(code), message=message)).SerializeToString()


class Server:
    """Serves registered services to every connection it is given.

    >>> server = Server()
    >>> server.register(task_pb2.DESCRIPTOR.services_by_name["Task"], TaskService())
    >>> await server.serve_unix("/run/x.sock")
    >>> ...
    >>> await server.shutdown()

    `observer`, if given, is called on the event loop after each call to a
    registered method has been answered, with (service, method, seconds, code):
    the time from the request's arrival to its answer and the status sent
    (CANCELLED for a call cut short). Calls to unknown services or methods are
    not reported, so peers cannot grow an observer's label set. It must be
    quick and must not raise (an exception is logged and dropped).
    """

    def __init__(
        self, *, authorize: Authorizer | None = None, observer: Observer | None = None
    ) -> None:
        self._services: dict[str, dict[str, Method]] = {}
        self._authorize = authorize
        self._observer = observer
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[ServerConnection] = set()
        self._socket_paths: list[str] = []
        self._shutting_down = False

    # -- services -----------------------------------------------------------
    def register(self, service: ServiceDescriptor, implementation: object) -> None:
        """Serve `service` with the coroutines of `implementation` named after its methods."""
        if service.full_name in self._services:
            raise ValueError(f"service {service.full_name} is already registered")
        self._services[service.full_name] = methods_of(service, implementation)

    def lookup(self, service: str, method: str) -> Method:
        """The method to run, or the UNIMPLEMENTED error ttrpc peers expect."""
        methods = self._services.get(service)
        if methods is None:
            raise TTRPCError(Code.UNIMPLEMENTED, f"service {service}")
        found = methods.get(method)
        if found is None:
            raise TTRPCError(Code.UNIMPLEMENTED, f"method {method}")
        return found

    # -- listening ----------------------------------------------------------
    async def serve_unix(self, address: str, mode: int = 0o600) -> None:
        """Listen on a Unix socket (path or unix:// URI), file mode 0600 by default.

        The socket file is removed at shutdown.
        """
        await self.serve_listener(listen_unix(address, mode))
        path = unix_path(address)
        if not path.startswith("\0"):
            self._socket_paths.append(path)

    async def serve_fd(self, fd: int, *, unlink_on_shutdown: bool = False) -> None:
        """Listen on an inherited listening socket fd (containerd passes 3).

        With `unlink_on_shutdown`, the Unix socket file it is bound to is
        removed by `shutdown`, as for sockets this server bound itself.
        """
        sock = listener_from_fd(fd)
        if unlink_on_shutdown and sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, str) and name and not name.startswith("\0"):
                self._socket_paths.append(name)
        await self.serve_listener(sock)

    async def serve_listener(self, sock: socket.socket) -> None:
        """Accept connections on a listening stream socket of any family."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(self._accept_factory, sock=sock)
        self._listeners.append(listener)

    def _accept_factory(self) -> Channel:
        return ServerConnection(self).channel

    async def serve_socket(self, sock: socket.socket) -> ServerConnection:
        """Serve one already connected stream socket (e.g. AF_VSOCK)."""
        connection = ServerConnection(self)
        await open_socket(sock, lambda: connection.channel)
        return connection

    async def serve_pipes(self, read_fd: int, write_fd: int) -> ServerConnection:
        """Serve a pipe pair, or a character device (virtio-serial port) given twice."""
        connection = ServerConnection(self)
        await open_pipe_pair(read_fd, write_fd, lambda: connection.channel)
        return connection

    # -- shutdown -----------------------------------------------------------
    @property
    def connections(self) -> int:
        return len(self._connections)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight calls finish for up to `grace` s, then close all."""
        self._shutting_down = True
        for listener in self._listeners:
            listener.close()
        calls = [task for conn in self._connections for task in conn.calls]
        if calls:
            _, late = await asyncio.wait(calls, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("ttrpc: cancelled %d calls still running after %.1fs", len(late), grace)
                await asyncio.wait(late, timeout=1.0)
        for connection in list(self._connections):
            # answers already written may still sit in the transport's buffer
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(connection.channel.drain(), 1.0)
            connection.channel.close("server shut down")
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        for path in self._socket_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._socket_paths.clear()


class ServerConnection:
    """One client connection: checks stream ids, runs one task per call."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.calls: set[asyncio.Task[None]] = set()
        self._last_stream_id = 0
        self.closed = asyncio.get_running_loop().create_future()
        self.channel = Channel(self._on_frame, self._on_oversized, self._on_closed)
        self._authorized = server._authorize is None
        server._connections.add(self)

    def _check_peer(self) -> bool:
        if self._authorized:
            return True
        transport = self.channel.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or not self.server._authorize(sock):  # type: ignore[misc]
            log.warning("ttrpc: refused a connection from an unauthorized peer")
            self.channel.close("peer not authorized")
            return False
        self._authorized = True
        return True

    def _reply(self, stream_id: int, data: bytes) -> None:
        try:
            self.channel.send(stream_id, TYPE_RESPONSE, data)
        except ConnectionError:
            log.debug("ttrpc: connection gone before the answer to stream %d", stream_id)

    def _on_frame(self, stream_id: int, msg_type: int, flags: int, data: bytes) -> None:
        if not self._check_peer():
            return
        if msg_type != TYPE_REQUEST:
            if msg_type == TYPE_DATA:
                log.debug("ttrpc: ignoring a data frame on stream %d (no streaming)", stream_id)
                return
            log.warning("ttrpc: closing connection: a client sent a response frame")
            self.channel.close("client sent a response frame")
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            self._reply(
                stream_id,
                status_response(
                    Code.INVALID_ARGUMENT,
                    f"stream id {stream_id} must be odd and greater than {self._last_stream_id}",
                ),
            )
            return
        self._last_stream_id = stream_id
        if self.server._shutting_down:
            self._reply(stream_id, status_response(Code.UNAVAILABLE, "ttrpc: server shutting down"))
            return
        task = asyncio.get_running_loop().create_task(self._run_call(stream_id, data))
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)

    def _on_oversized(self, stream_id: int, msg_type: int, length: int) -> None:
        log.warning("ttrpc: discarded a %d-byte frame on stream %d", length, stream_id)
        if msg_type == TYPE_REQUEST:
            self._reply(
                stream_id, status_response(Code.RESOURCE_EXHAUSTED, oversized_message(length))
            )

    def _on_closed(self, reason: str | None) -> None:
        for task in self.calls:
            task.cancel()
        self.server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(reason)

    async def _run_call(self, stream_id: int, data: bytes) -> None:
        observer = self.server._observer
        started = time.perf_counter() if observer is not None else 0.0
        request: Request | None = None
        code = Code.OK
        try:
            request = _decode_request(data)
            payload = await self._dispatch(stream_id, request)
            answer = Response(payload=payload).SerializeToString()
            if len(answer) > MAX_MESSAGE_SIZE:
                code = Code.RESOURCE_EXHAUSTED
                answer = status_response(code, oversized_message(len(answer)))
        except TTRPCError as exc:
            code = exc.code
            answer = Response(
                status=Status(code=int(exc.code), message=exc.message, details=exc.details)
            ).SerializeToString()
        except asyncio.CancelledError:
            self._reply(stream_id, status_response(Code.CANCELLED, "ttrpc: call cancelled"))
            if observer is not None:
                self._observe(observer, request, time.perf_counter() - started, Code.CANCELLED)
            raise
        except Exception as exc:
            log.exception("ttrpc: handler for stream %d failed", stream_id)
            code = Code.UNKNOWN
            answer = status_response(code, str(exc) or type(exc).__name__)
        if observer is None:
            self._reply(stream_id, answer)
        else:
            elapsed = time.perf_counter() - started
            self._reply(stream_id, answer)
            self._observe(observer, request, elapsed, code)
        with contextlib.suppress(ConnectionError):
            await self.channel.drain()

    def _observe(
        self, observer: Observer, request: Request | None, seconds: float, code: int
    ) -> None:
        if request is None or request.method not in self.server._services.get(request.service, {}):
            return
        try:
            observer(request.service, request.method, seconds, Code.of(int(code)))
        except Exception:
            log.exception("ttrpc: call observer failed")

    async def _dispatch(self, stream_id: int, request: Request) -> bytes:
        method = self.server.lookup(request.service, request.method)
        try:
            message = method.request_type.FromString(request.payload)
        except DecodeError as exc:
            raise TTRPCError(
                Code.INVALID_ARGUMENT,
                f"cannot parse {method.request_type.DESCRIPTOR.full_name}: {exc}",
            ) from None
        metadata: dict[str, list[str]] = {}
        for pair in request.metadata:
            metadata.setdefault(pair.key.lower(), []).append(pair.value)
        timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        context = CallContext(request.service, request.method, stream_id, metadata, timeout)
        if timeout is None:
            result = await method.handler(message, context)
        else:
            try:
                async with asyncio.timeout(timeout):
                    result = await method.handler(message, context)
            except TimeoutError:
                raise TTRPCError(Code.DEADLINE_EXCEEDED, "context deadline exceeded") from None
        if result is None:
            return b""
        if not isinstance(result, Message):
            raise TypeError(f"{request.service}/{request.method} returned {type(result).__name__}")
        return result.SerializeToString()


def _decode_request(data: bytes) -> Request:
    try:
        return Request.FromString(data)
    except DecodeError as exc:
        raise TTRPCError(Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}") from None
