"""The debug console: a root shell in the guest on its own virtio-serial port.

Kata's `agent.debug_console` kernel parameter (set by the runtime when
`debug_console_enabled = true`): the agent then serves a shell on the
virtio-serial port `pykata.console.0`, whose host end is a Unix socket in the
sandbox's state directory (`pykata-runtime exec` connects to it). Without the
parameter this module is never imported.

Each host session gets a fresh /bin/sh on a pty (its controlling terminal, in a
session of its own); bytes are copied both ways between the port and the pty
master. A shell that exits is replaced by a new one while the host stays; when
the host goes, the shell is hung up. A virtio-serial port reads end-of-file at
once while nobody is connected on the host, so between sessions the port is
looked at every IDLE_POLL seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
from collections.abc import Sequence

from agent.children import Reaper

log = logging.getLogger("agent.debug_console")

SHELL: tuple[str, ...] = ("/bin/sh",)
SHELL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "xterm"}
IDLE_POLL = 0.25  # s between looks at the port while no host is connected
HANGUP_GRACE = 2.0  # s for a hung-up shell to exit before SIGKILL
FIND_TIMEOUT = 30.0  # s for the port to appear at boot
RESPAWN_PAUSE = 1.0  # s before replacing a shell that lived shorter than this
FAILURE_PAUSE = 5.0  # s before trying again after a shell could not start
CHUNK = 65536
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class _Copy:
    """Bytes from one fd to another through the event loop, with back-pressure.

    `ended` resolves when the source reads end-of-file or fails (a pty master
    reads EIO once the shell side is closed).
    """

    def __init__(self, src: int, dst: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._src, self._dst = src, dst
        self._pending = b""
        self.ended: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_reader(src, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._src, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end()
            return
        self._pending = data
        self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self._dst, self._pending)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            self._end()
            return
        self._pending = self._pending[written:]
        if self._pending:  # the reader is slow: stop reading until this is out
            self._loop.remove_reader(self._src)
            self._loop.add_writer(self._dst, self._writable)

    def _writable(self) -> None:
        self._loop.remove_writer(self._dst)
        self._flush()
        if not self._pending and not self.ended.done():
            self._loop.add_reader(self._src, self._readable)

    def _end(self) -> None:
        self.close()
        if not self.ended.done():
            self.ended.set_result(None)

    def close(self) -> None:
        self._loop.remove_reader(self._src)
        self._loop.remove_writer(self._dst)


class Shell:
    """One shell on a fresh pty, session leader with the pty as its terminal."""

    def __init__(self, reaper: Reaper, argv: Sequence[str] = SHELL) -> None:
        from agent.stdio import resize

        self.master, slave = os.openpty()
        try:
            resize(self.master, 24, 80)
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.ttyname(slave), os.O_RDWR, 0),
                (os.POSIX_SPAWN_DUP2, 0, 1),
                (os.POSIX_SPAWN_DUP2, 0, 2),
            ]
            # setsid comes before the file actions: opening the tty makes it the shell's
            self.pid = os.posix_spawn(
                argv[0], list(argv), SHELL_ENV, file_actions=actions, setsid=True,
                setsigdef=_RESET_SIGNALS, setsigmask=(),
            )  # fmt: skip
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self.master, False)
        self.exited = reaper.watch(self.pid)

    def kill(self) -> None:
        """SIGKILL the shell's process group now (the reaper collects it)."""
        with contextlib.suppress(OSError):
            os.close(self.master)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    async def hangup(self) -> int:
        """Close the terminal (SIGHUP), then SIGKILL what stays; returns the exit status."""
        with contextlib.suppress(OSError):
            os.close(self.master)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGHUP)
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), HANGUP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            return await self.exited


async def session(port: int, reaper: Reaper, shell: Sequence[str] = SHELL) -> None:
    """Serve one host session on `port` (non-blocking) until the host goes away."""
    loop = asyncio.get_running_loop()
    while True:
        current, started = Shell(reaper, shell), loop.time()
        log.info("debug console: shell %d started", current.pid)
        inbound, outbound = _Copy(port, current.master), _Copy(current.master, port)
        try:
            await asyncio.wait(
                {inbound.ended, current.exited}, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the agent is stopping
            current.kill()
            raise
        finally:
            inbound.close()
            outbound.close()
        if inbound.ended.done():  # the host left
            status = await current.hangup()
            log.info("debug console: host left, shell %d ended (%d)", current.pid, status)
            return
        _drain(current.master, port)
        os.close(current.master)
        status = current.exited.result()
        log.info("debug console: shell %d exited (%d); starting another", current.pid, status)
        _say(port, f"\r\n[pykata debug console: the shell exited ({status}), a new one starts]\r\n")
        if loop.time() - started < RESPAWN_PAUSE:  # a shell that dies at once: do not spin
            await asyncio.sleep(RESPAWN_PAUSE)


def _drain(master: int, port: int) -> None:
    """What the shell wrote just before it exited, as far as it goes without waiting."""
    for _ in range(16):
        try:
            data = os.read(master, CHUNK)
        except OSError:
            return
        if not data:
            return
        _say(port, data)


def _say(port: int, text: str | bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(port, text.encode() if isinstance(text, str) else text)


def host_connected(port: int) -> bool:
    """A virtio-serial port polls HUP while its host end is closed."""
    poller = select.poll()
    poller.register(port, select.POLLIN | select.POLLOUT)
    return not any(events & select.POLLHUP for _, events in poller.poll(0))


async def find_port(name: str, timeout: float = FIND_TIMEOUT) -> str:
    """/dev/vportNpM of the named port, waiting for it to appear."""
    from agent.channel import RETRY, serial_port

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (path := serial_port(name)) is None:
        if loop.time() > deadline:
            raise RuntimeError(f"no virtio-serial port named {name} after {timeout:.0f}s")
        await asyncio.sleep(RETRY)
    return path


async def serve(name: str, reaper: Reaper, shell: Sequence[str] = SHELL) -> None:
    """Serve the debug console on the port named `name` until cancelled."""
    path = name if name.startswith("/") else await find_port(name)
    port = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    log.info("debug console on %s (%s)", name, path)
    try:
        while True:
            if host_connected(port):
                try:
                    await session(port, reaper, shell)
                except OSError as exc:
                    log.warning("debug console: %s", exc)
                    _say(port, f"[pykata debug console: no shell: {exc}]\r\n")
                    await asyncio.sleep(FAILURE_PAUSE)
            await asyncio.sleep(IDLE_POLL)
    finally:
        os.close(port)
