"""HTTP/1.1 over a Unix socket: how the admin CLI talks to a sandbox's monitor socket.

Stdlib http.client with a connection class that dials a socket file. One request
per connection, as Kata's shim client does; errors become ShimCallError with the
status (None when nothing answered) and what the shim said.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

DEFAULT_TIMEOUT = 3.0  # Kata's shim client gives each call 3 s


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection to a Unix socket (the Host header says `shim`)."""

    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__("shim", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ShimCallError(Exception):
    """A monitor socket that did not answer, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def call(
    socket_path: str | Path,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    content_type: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """Send one request and return the body of a 2xx answer; raise ShimCallError otherwise."""
    conn = UnixHTTPConnection(socket_path, timeout)
    headers = {"Connection": "close"}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except FileNotFoundError:
        raise ShimCallError(f"no monitor socket at {socket_path}") from None
    except ConnectionRefusedError:
        raise ShimCallError(f"nothing listens on {socket_path}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ShimCallError(
            f"{method} {target} on {socket_path}: {exc or type(exc).__name__}"
        ) from None
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        said = data.decode(errors="replace").strip()
        message = f"{method} {target}: {response.status} {response.reason}"
        raise ShimCallError(f"{message}: {said}" if said else message, response.status, data)
    return data


def get(socket_path: str | Path, target: str, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """GET `target` (path and query) from the monitor socket."""
    return call(socket_path, "GET", target, timeout=timeout)
