"""`pykata-runtime exec`: one command, or a terminal, on a sandbox VM's debug console.

With `debug_console_enabled = true` under [agent.kata], QEMU serves the host
end of the guest's `pykata.console.0` virtio-serial port on `dbgcon.sock` in
the sandbox's state directory, and the agent runs a fresh /bin/sh on a pty for
each connection (agent/debug_console.py).

One command (`run_command`) types a single line into that shell: it turns the
terminal's echo and CR/LF translation off, prints a begin marker, runs the
command with stdin from /dev/null and stderr joined to stdout, then prints an
end marker with the exit status. The markers are assembled by printf from
pieces, so the echo of the typed line (which comes before `stty -echo` takes
effect) never contains them; the output is the bytes between them, exactly.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shim.admin.terminal_text import TerminalText
from shim.vmm.layout import VMPaths

DEFAULT_TIMEOUT = 60.0
CHUNK = 64 << 10
MAX_COLLECTED = 16 << 20  # run_command without a sink: the output kept in memory
# busybox ash's line editor takes at most 1024 bytes per line
MAX_LINE = 1000
ESCAPE = 0x1D  # Ctrl-]
ENABLE_HINT = (
    "set debug_console_enabled = true under [agent.kata] in the runtime configuration "
    "and start the pod again"
)


def command_line(argv: Sequence[str], marker: str) -> bytes:
    """The line typed into the shell for `argv` (see the module docstring)."""
    if not argv:
        raise ValueError("no command given")
    if any(ord(c) < 32 or ord(c) == 127 for arg in argv for c in arg):
        raise ValueError("the command holds control characters (the shell would edit them)")
    command = " ".join(shlex.quote(arg) for arg in argv)
    line = (
        "stty -echo -onlcr 2>/dev/null; "
        f"printf 'PYKATA-%s-%s\\n' BEGIN {marker}; "
        f"( {command} ) </dev/null 2>&1; "
        f"printf 'PYKATA-%s-%s:%d\\n' END {marker} \"$?\"\n"
    ).encode()
    if len(line) > MAX_LINE:
        raise ValueError(
            f"command too long for the debug console ({len(line)} bytes typed, at most "
            f"{MAX_LINE}): run it from an interactive session"
        )
    return line


class Markers:
    """Finds the output between the begin and end markers in the bytes that arrive.

    The output is given out as it comes: what is held is at most one chunk and the
    few bytes that could be the start of a marker cut by the chunk boundary.
    """

    def __init__(self, marker: str) -> None:
        self.begin = f"PYKATA-BEGIN-{marker}\n".encode()
        end = f"PYKATA-END-{marker}:".encode()
        self.end = re.compile(re.escape(end) + rb"(\d{1,3})\n")  # $? is 0..255
        self._end_hold = len(end) + 3  # an end marker less its last byte
        self.data = bytearray()  # bytes not given out yet
        self.started = False  # the begin marker arrived
        self.status: int | None = None  # set once the end marker arrived

    def feed(self, chunk: bytes) -> bytes:
        """Add bytes; return the output they complete (b"" while none; status once done)."""
        if self.status is not None:
            return b""
        self.data += chunk
        if not self.started:
            found = self.data.find(self.begin)
            if found < 0:
                del self.data[: max(0, len(self.data) - len(self.begin) + 1)]
                return b""
            del self.data[: found + len(self.begin)]
            self.started = True
        end = self.end.search(self.data)
        if end is not None:
            self.status = int(end.group(1))
            output = bytes(self.data[: end.start()])
            self.data.clear()
            return output
        cut = max(0, len(self.data) - self._end_hold)
        output = bytes(self.data[:cut])
        del self.data[:cut]
        return output


async def run_command(
    socket_path: str | Path,
    argv: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    sink: Callable[[bytes], object] | None = None,
) -> tuple[int, bytes]:
    """Run `argv` in the guest's debug console shell: (exit status, stdout+stderr).

    With `sink`, the output goes to it chunk by chunk as it comes and b"" is returned;
    without, it is collected, up to MAX_COLLECTED bytes (past that, ValueError).
    Raises TimeoutError when the markers have not both arrived after `timeout`
    seconds, OSError when the console cannot be reached.
    """
    marker = secrets.token_hex(8)
    line = command_line(argv, marker)
    markers = Markers(marker)
    collected = bytearray()

    def collect(output: bytes) -> None:
        if len(collected) + len(output) > MAX_COLLECTED:
            raise ValueError(f"the command's output is over {MAX_COLLECTED} bytes")
        collected.extend(output)

    give = sink if sink is not None else collect
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(line)
            await writer.drain()
            while markers.status is None:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    raise ConnectionError("the debug console closed before the command ended")
                if output := markers.feed(chunk):
                    give(output)
        finally:
            writer.close()
    assert markers.status is not None  # the loop above ends there
    return markers.status, bytes(collected)


def interactive(socket_path: str | Path, *, raw: bool = False) -> int:
    """A raw terminal on the debug console until Ctrl-] or the console closes.

    What the guest sends is shown through TerminalText unless `raw`: then it reaches
    the terminal as it is, escape sequences included (full-screen programs need that).
    """
    import selectors
    import socket
    import termios
    import tty

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    if saved is not None:
        tty.setraw(stdin, termios.TCSANOW)  # keep what was typed ahead
    text = None if raw else TerminalText()
    shown = "" if raw else " The guest's control characters are shown escaped (--raw: as sent)."
    sys.stderr.write(f"Connected to the VM's debug console; Ctrl-] leaves.{shown}\r\n")
    sys.stderr.flush()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(sock, selectors.EVENT_READ)
    message = "\r\n[left the debug console]\r\n"
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = sock.recv(CHUNK)
                    if not data:
                        message = "\r\n[the debug console closed]\r\n"
                        return 0
                    _write_all(sys.stdout.fileno(), data if text is None else text.feed(data))
                    continue
                data = os.read(stdin, 4096)
                if not data or ESCAPE in data:
                    sock.sendall(data.split(bytes([ESCAPE]))[0])
                    return 0
                sock.sendall(data)
    finally:
        if text is not None:
            _write_all(sys.stdout.fileno(), text.flush())
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        selector.close()
        sock.close()
        sys.stderr.write(message)
        sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main_exec(sandbox_state_dir: str | Path, argv: Sequence[str], *, raw: bool = False) -> int:
    """`pykata-runtime exec [--raw] SANDBOX [CMD...]`: the command's exit status (or 1).

    The guest's output is printed as it comes, through TerminalText unless `raw`.
    """
    state = Path(sandbox_state_dir)
    path = VMPaths(state).debug_console_socket
    if not path.exists():
        print(
            f"pykata-runtime exec: sandbox {state.name} has no debug console ({path} does "
            f"not exist).\nTo have one, {ENABLE_HINT}.",
            file=sys.stderr,
        )
        return 1
    try:
        if not argv:
            return interactive(path, raw=raw)
        text = None if raw else TerminalText()

        def show(output: bytes) -> None:
            _print(output if text is None else text.feed(output))

        status, _ = asyncio.run(run_command(path, argv, sink=show))
        if text is not None:
            _print(text.flush())
    except ValueError as exc:
        print(f"pykata-runtime exec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except TimeoutError:
        print(
            f"pykata-runtime exec: no answer from the debug console of {state.name} after "
            f"{DEFAULT_TIMEOUT:.0f}s",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(
            f"pykata-runtime exec: cannot use the debug console {path}: {exc} "
            "(is the sandbox's VM running?)",
            file=sys.stderr,
        )
        return 1
    return status


def _print(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
