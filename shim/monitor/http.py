"""A small HTTP/1.1 server on a Unix socket: the per-sandbox monitor socket.

Stdlib asyncio only, on the shim's own event loop. Routes map a path and its
methods to an async handler returning (status, content type, body). The server
answers 404 for unknown paths, 405 (with Allow) for other methods, 400 for
malformed requests, 413 past the body limit, 431 past the header limit; it
closes idle and slow connections and caps their number. Nothing a peer sends
raises out of it: every connection's errors end in that connection.

Handlers share the loop with the Task API: they must await, not block. Work
that takes more than a millisecond or two of CPU belongs in
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple
from urllib.parse import parse_qs

import structlog

from ttrpc.transport import listen_unix

log = structlog.get_logger(__name__)

MAX_BODY = 1 << 20  # 1 MiB
MAX_HEAD = 16 << 10  # request line and headers
IDLE_TIMEOUT = 30.0  # waiting for (the head of) the next request
BODY_TIMEOUT = 10.0  # reading a body once its head has come
HANDLER_TIMEOUT = 30.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32

Reply = tuple[int, str, bytes | str]
Authorizer = Callable[[socket.socket], bool]

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
_METHOD = re.compile(r"^[A-Z]{1,16}$")
_TEXT = "text/plain; charset=utf-8"


class Request(NamedTuple):
    """One parsed request. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        """The first value of query parameter `name` (percent-decoded), or None."""
        values = self.query.get(name)
        return values[0] if values else None


Handler = Callable[[Request], Awaitable[Reply]]


class _Reject(Exception):
    """A request answered with an error status, after which the connection closes."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _Route(NamedTuple):
    handler: Handler
    methods: frozenset[str]


class MonitorServer:
    """Routes and a listening socket.

    >>> server = MonitorServer()
    >>> server.route("/metrics", metrics_handler)           # GET
    >>> server.route("/iptables", iptables, ("GET", "PUT"))
    >>> await server.start("/run/pykata/ns/sb/shim-monitor.sock")
    >>> ...
    >>> await server.close()
    """

    def __init__(
        self,
        *,
        max_body: int = MAX_BODY,
        max_head: int = MAX_HEAD,
        idle_timeout: float = IDLE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        handler_timeout: float = HANDLER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        authorize: Authorizer | None = None,
    ) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.handler_timeout = handler_timeout
        self.max_connections = max_connections
        self._authorize = authorize
        self._routes: dict[str, _Route] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._path: str | None = None

    def route(self, path: str, handler: Handler, methods: Iterable[str] = ("GET",)) -> None:
        """Serve `path` (exact match, query string aside) with `handler` for `methods`."""
        self._routes[path] = _Route(handler, frozenset(m.upper() for m in methods))

    @property
    def path(self) -> str | None:
        """The socket path while serving."""
        return self._path

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, path: str, mode: int = 0o600) -> None:
        """Listen on the Unix socket `path` (file mode 0600 by default).

        Raises OSError if the socket cannot be bound; a stale socket file is replaced.
        """
        sock = listen_unix(path, mode)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connection, sock=sock, limit=self.max_head
            )
        except BaseException:
            sock.close()
            raise
        self._path = path

    async def start_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP `host`:`port` (0: any free port) and return the bound address.

        For a node-wide endpoint (`pykata-runtime monitor`); `authorize` sees TCP peers
        too, so leave it unset unless it handles them.
        """
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=self.max_head
        )
        bound = self._server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        """Stop listening, end every connection, remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    async def __aenter__(self) -> MonitorServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- one connection -------------------------------------------------------
    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        try:
            if len(self._connections) >= self.max_connections:
                await self._write(writer, 503, _TEXT, b"too many connections\n", keep=False)
                return
            if self._authorize is not None:
                sock = writer.get_extra_info("socket")
                if sock is None or not self._authorize(sock):
                    log.warning("monitor socket: refused an unauthorized peer")
                    return
            if task is not None:
                self._connections.add(task)
            while await self._one_request(reader, writer):
                pass
        except asyncio.CancelledError:
            pass  # close() ends connections; the task is ours, nothing waits on it
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("monitor socket: connection failed")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True to keep the connection for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
        except asyncio.IncompleteReadError:
            return False  # the peer hung up (between requests, or mid-head)
        except asyncio.LimitOverrunError:
            await self._write(writer, 431, _TEXT, b"request head too large\n", keep=False)
            return False
        except TimeoutError:
            return False
        try:
            request, keep, expect_continue = self._parse_head(head)
            route = self._routes.get(request.path)
            if route is None:
                raise _Reject(404, f"no such path: {request.path}")
            if request.method not in route.methods:
                allow = ", ".join(sorted(route.methods))
                raise _Reject(405, f"{request.method} not allowed", {"Allow": allow})
            body = await self._read_body(reader, writer, request.headers, expect_continue)
        except _Reject as reject:
            message = (reject.message + "\n").encode()
            await self._write(writer, reject.status, _TEXT, message, reject.headers, keep=False)
            return False
        request = request._replace(body=body)
        status, content_type, payload = await self._call(route.handler, request)
        await self._write(writer, status, content_type, payload, keep=keep)
        return keep

    def _parse_head(self, head: bytes) -> tuple[Request, bool, bool]:
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not _METHOD.match(parts[0]) or not parts[1]:
            raise _Reject(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Reject(505, f"unsupported version {version[:16]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise _Reject(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            if key in headers:
                if key in ("content-length", "transfer-encoding", "host"):
                    if headers[key] != value:
                        raise _Reject(400, f"conflicting {name} headers")
                    continue
                value = f"{headers[key]}, {value}"
            headers[key] = value
        if target.startswith(("http://", "https://")):  # absolute form
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        if not target.startswith("/"):
            raise _Reject(400, "request target must be a path")
        path, _, query = target.partition("?")
        try:
            params = parse_qs(query, keep_blank_values=True, errors="strict") if query else {}
        except (ValueError, UnicodeDecodeError):
            raise _Reject(400, "malformed query string") from None
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        expect = headers.get("expect", "").lower()
        if expect and expect != "100-continue":
            raise _Reject(417, f"cannot meet Expect: {expect[:32]}")
        return Request(method, path, params, headers, b""), keep, expect == "100-continue"

    async def _read_body(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        expect_continue: bool,
    ) -> bytes:
        chunked = headers.get("transfer-encoding")
        length_text = headers.get("content-length")
        if chunked is not None:
            if length_text is not None:
                raise _Reject(400, "both Content-Length and Transfer-Encoding")
            if chunked.lower() != "chunked":
                raise _Reject(501, f"unsupported Transfer-Encoding {chunked[:32]!r}")
            if expect_continue:
                await self._continue(writer)
            return await self._with_timeout(self._read_chunked(reader))
        if length_text is None:
            return b""
        if not length_text.isdigit() or len(length_text) > 18:
            raise _Reject(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body:
            raise _Reject(413, f"body over {self.max_body} bytes")
        if length == 0:
            return b""
        if expect_continue:
            await self._continue(writer)
        return await self._with_timeout(reader.readexactly(length))

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Reject(400, "malformed chunk size") from None
            if size < 0:
                raise _Reject(400, "malformed chunk size")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields, ignored
                return b"".join(parts)
            total += size
            if total > self.max_body:
                raise _Reject(413, f"body over {self.max_body} bytes")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _Reject(400, "malformed chunk")

    async def _with_timeout(self, reading: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(reading, self.body_timeout)
        except TimeoutError:
            raise _Reject(408, "body not received in time") from None
        except asyncio.LimitOverrunError:
            raise _Reject(400, "chunk line too long") from None

    async def _continue(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _call(self, handler: Handler, request: Request) -> tuple[int, str, bytes]:
        try:
            status, content_type, body = await asyncio.wait_for(
                handler(request), self.handler_timeout
            )
        except TimeoutError:
            log.warning("monitor socket: handler timed out", path=request.path)
            return 504, _TEXT, b"handler timed out\n"
        except Exception as exc:
            log.exception("monitor socket: handler failed", path=request.path)
            return 500, _TEXT, f"internal error: {exc}\n".encode(errors="replace")
        if isinstance(body, str):
            body = body.encode()
        if (
            not isinstance(status, int)
            or not 200 <= status <= 599
            or not isinstance(content_type, str)
            or "\r" in content_type
            or "\n" in content_type
            or not isinstance(body, bytes | bytearray | memoryview)
        ):
            log.error("monitor socket: handler gave a bad reply", path=request.path)
            return 500, _TEXT, b"internal error: bad reply from handler\n"
        return status, content_type, bytes(body)

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        keep: bool,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        if not keep:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
