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
import re
import secrets
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from shim.vmm.layout import VMPaths

DEFAULT_TIMEOUT = 60.0
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
    """Finds the output between the begin and end markers in the bytes that arrive."""

    def __init__(self, marker: str) -> None:
        self.begin = f"PYKATA-BEGIN-{marker}\n".encode()
        self.end = re.compile(rb"PYKATA-END-" + marker.encode() + rb":(\d+)\n")
        self.data = bytearray()
        self.start = -1  # where the output starts, once the begin marker arrived
        self.scanned = 0  # no end marker starts before this

    def feed(self, chunk: bytes) -> tuple[int, bytes] | None:
        """Add bytes; (status, output) once both markers arrived, else None."""
        self.data += chunk
        if self.start < 0:
            found = self.data.find(self.begin)
            if found < 0:
                return None
            self.start = self.scanned = found + len(self.begin)
        end = self.end.search(self.data, self.scanned)
        if end is None:
            # an end marker cut by the chunk boundary starts in the last few bytes
            self.scanned = max(self.scanned, len(self.data) - 64)
            return None
        return int(end.group(1)), bytes(self.data[self.start : end.start()])


async def run_command(
    socket_path: str | Path, argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT
) -> tuple[int, bytes]:
    """Run `argv` in the guest's debug console shell: (exit status, stdout+stderr).

    Raises TimeoutError when the markers have not both arrived after `timeout`
    seconds, OSError when the console cannot be reached.
    """
    marker = secrets.token_hex(8)
    line = command_line(argv, marker)
    markers = Markers(marker)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        try:
            writer.write(line)
            await writer.drain()
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("the debug console closed before the command ended")
                if (found := markers.feed(chunk)) is not None:
                    return found
        finally:
            writer.close()


def interactive(socket_path: str | Path) -> int:
    """A raw terminal on the debug console until Ctrl-] or the console closes."""
    import os
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
    sys.stderr.write("Connected to the VM's debug console; Ctrl-] leaves.\r\n")
    sys.stderr.flush()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(sock, selectors.EVENT_READ)
    message = "\r\n[left the debug console]\r\n"
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        message = "\r\n[the debug console closed]\r\n"
                        return 0
                    os.write(sys.stdout.fileno(), data)
                    continue
                data = os.read(stdin, 4096)
                if not data or ESCAPE in data:
                    sock.sendall(data.split(bytes([ESCAPE]))[0])
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        selector.close()
        sock.close()
        sys.stderr.write(message)
        sys.stderr.flush()


def main_exec(sandbox_state_dir: str | Path, argv: Sequence[str]) -> int:
    """`pykata-runtime exec SANDBOX [CMD...]`: the command's exit status (or 1)."""
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
            return interactive(path)
        status, output = asyncio.run(run_command(path, argv))
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
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    return status
