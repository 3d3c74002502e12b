"""QMP over `qemu.qmp`: connect while QEMU starts, run commands, wait for events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from qemu.qmp import EventListener, QMPClient
from qemu.qmp.message import Message

log = structlog.get_logger(__name__)

# qemu.qmp logs every disconnect of a QEMU that quit at ERROR: ours are expected
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QMPError(Exception):
    """A QMP connection or command failed."""


class QMP:
    """One QMP session with a sandbox's QEMU."""

    def __init__(self, socket: Path, name: str = "pykata") -> None:
        self.socket = socket
        self._client = QMPClient(name)
        self._listeners: list[EventListener] = []

    async def connect(self, *, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect as soon as QEMU's QMP socket accepts; give up if QEMU died or on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Exception | None = None
        while True:
            if not alive():
                raise QMPError(f"QEMU exited before QMP answered on {self.socket}")
            if self.socket.exists():
                try:
                    await asyncio.wait_for(
                        self._client.connect(str(self.socket)), max(0.1, deadline - loop.time())
                    )
                    return
                except Exception as e:  # ConnectError wraps OSError, EOFError...
                    last = e
                    await self._reset()
            if loop.time() >= deadline:
                raise QMPError(f"no QMP on {self.socket} after {timeout:.1f}s: {last}")
            await asyncio.sleep(0.01)

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        self._client = QMPClient(self._client.name)
        for listener in self._listeners:
            self._client.register_listener(listener)

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Run a QMP command; its `return` value."""
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except TimeoutError as e:
            raise QMPError(f"QMP {command}: no answer in {timeout}s") from e
        except Exception as e:
            raise QMPError(f"QMP {command}: {e}") from e

    async def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU a file descriptor (SCM_RIGHTS), then name it with `getfd`."""
        try:
            self._client.send_fd_scm(fd)
        except Exception as e:
            raise QMPError(f"QMP getfd {name}: {e}") from e
        await self.execute("getfd", {"fdname": name})

    def listen(
        self, names: str | list[str], match: Callable[[Message], bool] | None = None
    ) -> EventListener:
        """Start collecting events now (call before the action that causes them)."""
        listener = EventListener(names, match)
        self._listeners.append(listener)
        self._client.register_listener(listener)
        return listener

    def unlisten(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
            with contextlib.suppress(Exception):
                self._client.remove_listener(listener)

    async def quit(self, timeout: float = 5.0) -> bool:
        """Ask QEMU to quit; True if it acknowledged (or hung up, which is the same)."""
        try:
            await asyncio.wait_for(self._client.execute("quit"), timeout)
        except TimeoutError:
            return False
        except Exception:  # QEMU may close the socket before the reply
            return True
        return True

    async def close(self) -> None:
        """Disconnect; errors from a QEMU that is already gone are expected."""
        for listener in list(self._listeners):
            self.unlisten(listener)
        with contextlib.suppress(Exception):
            await self._client.disconnect()


def port_open_event(port_id: str) -> Callable[[Message], bool]:
    """Event filter: VSERPORT_CHANGE for `port_id` (open or closed)."""

    def match(event: Message) -> bool:
        return event.get("data", {}).get("id") == port_id

    return match
