"""What passes from containerd to the shim and from `start` to the daemon it forks.

The shim's names, its command-line arguments, the runtime options on stdin, and the
fds and environment variables `start` hands the daemon. Every `start`, `delete` and
`-info` imports this, so it imports only `os` and nothing else of the shim.
"""

from __future__ import annotations

import os

RUNTIME_NAME = "io.containerd.pykata.v2"
VERSION = "0.1.0"

LISTENER_FD = 3  # containerd's convention for the shim's socket
READY_FD = 4  # the daemon writes READY_WORD (or why it failed) here
READY_ENV = "PYKATA_READY_FD"
READY_WORD = "ready"
OPTIONS_ENV = "PYKATA_START_OPTIONS"  # stdin's runtime options, hex; read by the Sandbox API


class ShimArgs:
    """What containerd told us on the command line.

    A plain class, not a dataclass: `dataclasses` pulls in `inspect`, ~6 ms of
    every `start` and `delete`.
    """

    def __init__(self) -> None:
        self.namespace = ""
        self.id = ""
        self.address = ""
        self.publish_binary = "containerd"
        self.bundle = ""
        self.socket = ""
        self.debug_socket = ""
        self.debug = False
        self.version = False
        self.info = False
        self.action = ""  # "start", "delete" or "" (serve)
        self.ignored: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"ShimArgs({vars(self)!r})"


def read_stdin() -> bytes:
    """What containerd wrote on our stdin (the runtime options, an Any), or nothing."""
    chunks = []
    try:
        if not os.isatty(0):
            while chunk := os.read(0, 65536):
                chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)
