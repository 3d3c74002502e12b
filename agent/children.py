"""Child processes: spawn them, reap every child, keep exit statuses for whoever asks.

The agent is PID 1 or a child subreaper, so container processes (re-parented to
it when `runc create`/`runc exec` exit) and orphans are its children too. One
SIGCHLD handler reaps them all with waitpid(-1); nothing else in the agent may
wait for a child (no subprocess.Popen.wait, no asyncio child watchers), so every
command is started with spawn() and awaited through the Reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Sequence

# Signals Python ignores (SIG_IGN survives exec): children get them back.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def exit_status(wait_status: int) -> int:
    """Shell-style status: the exit code, or 128+signal when killed by a signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Reaper:
    """Reaps all children on SIGCHLD and hands statuses to watchers.

    A child that exits before anyone watches it (a container init that dies
    before the agent read its pid file, an orphan) is remembered for a while,
    with the time it was reaped, so a later watch(pid, since=...) still gets it.
    """

    def __init__(self, keep: int = 4096) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self._keep = keep

    def install(self) -> None:
        """Start reaping on SIGCHLD (main thread only), and reap what already exited."""
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def uninstall(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def reap(self) -> None:
        """Collect every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            code = exit_status(status)
            future = self._waiters.pop(pid, None)
            if future is not None:
                if not future.done():
                    future.set_result(code)
                continue
            self._unclaimed[pid] = (code, time.monotonic())
            while len(self._unclaimed) > self._keep:
                self._unclaimed.popitem(last=False)

    def watch(self, pid: int, since: float | None = None) -> asyncio.Future[int]:
        """A future for pid's exit status.

        `since` (time.monotonic()) bounds how old a remembered exit may be: a
        status reaped before it belongs to an earlier process with the same pid.
        """
        future = self._waiters.get(pid)
        if future is not None:
            return future
        future = self._loop.create_future()
        remembered = self._unclaimed.pop(pid, None)
        if remembered is not None and (since is None or remembered[1] >= since):
            future.set_result(remembered[0])
            return future
        self._waiters[pid] = future
        return future


def which(name: str) -> str | None:
    """Path of an executable found on PATH (shutil.which without the import)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for folder in os.environ.get("PATH", "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin").split(
        ":"
    ):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Start argv[0] (a path) with the given fds as 0/1/2 (/dev/null for None).

    posix_spawn: no fork of the Python process, only the fds named here are
    inherited (everything else is close-on-exec), ignored signals reset.
    """
    null = -1
    if None in (stdin, stdout, stderr):
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    actions = [
        (os.POSIX_SPAWN_DUP2, null if fd is None else fd, target)
        for target, fd in enumerate((stdin, stdout, stderr))
    ]
    try:
        return os.posix_spawn(
            argv[0],
            list(argv),
            os.environ if env is None else env,
            file_actions=actions,
            setsigdef=_RESET_SIGNALS,
            setsigmask=(),
        )
    finally:
        if null >= 0:
            os.close(null)


class Completed:
    """What a finished command left behind.

    A plain class, not a dataclass: a dataclass compiles its methods at import, and
    under TCG that is ~10 ms of every booted VM's start (this module is on its path).
    """

    __slots__ = ("argv", "status", "stderr", "stdout")

    def __init__(self, argv: Sequence[str], status: int, stdout: bytes, stderr: bytes) -> None:
        self.argv = argv
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Completed(argv={self.argv!r}, status={self.status})"

    @property
    def error_text(self) -> str:
        """The command's complaint, for error messages."""
        text = (self.stderr or self.stdout).decode(errors="replace").strip()
        return text or f"exit status {self.status}"


async def _collect(fd: int, sink: bytearray) -> None:
    """Read fd until EOF into sink, through the event loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    done = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            sink.extend(chunk)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def read_to_end(fd: int) -> bytes:
    """Everything written to fd (a pipe's read end) until EOF, through the event loop;
    fd is closed."""
    sink = bytearray()
    await _collect(fd, sink)
    return bytes(sink)


async def _feed(fd: int, data: bytes) -> None:
    """Write data to fd (non-blocking) through the event loop, then close it.

    A reader that exits early (EPIPE) ends the feed quietly: its status tells why.
    """
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    view = memoryview(data)
    done = loop.create_future()

    def writable() -> None:
        nonlocal view
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            return
        except OSError:
            view = view[:0]
        if not view and not done.done():
            done.set_result(None)

    try:
        if view:
            loop.add_writer(fd, writable)
            try:
                await done
            finally:
                loop.remove_writer(fd)
    finally:
        os.close(fd)


async def run(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float | None = 60.0,
) -> Completed:
    """Run a command to completion, capturing stdout and stderr.

    `input` (any size) is fed to its stdin while it runs. On timeout the
    command is killed and TimeoutError raised.
    """
    stdin_fd = feed = None
    if input is not None:
        stdin_fd, feed = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = spawn(argv, stdin=stdin_fd, stdout=out_w, stderr=err_w)
        exited = reaper.watch(pid)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        if feed is not None:
            os.close(feed)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
        if stdin_fd is not None:
            os.close(stdin_fd)
    out, err = bytearray(), bytearray()
    try:
        async with asyncio.timeout(timeout):
            streams = [_collect(out_r, out), _collect(err_r, err)]
            if feed is not None:
                streams.append(_feed(feed, input or b""))
            await asyncio.gather(*streams)
            status = await exited
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise TimeoutError(f"{argv[0]} {' '.join(argv[1:3])}: no answer after {timeout}s") from None
    return Completed(argv, status, bytes(out), bytes(err))
