"""Sandboxes on this host, found from their state directories: `list` and `console`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from shim import paths
from shim.admin import shim_client
from shim.admin.errors import AdminError
from shim.admin.terminal_text import RAW_HELP, TerminalText
from shim.vmm import console_log

CONSOLE_CHUNK = 64 << 10  # the log is copied a chunk at a time
CONSOLE_TAIL = 256 << 10  # console prints the log's end, not its whole (up to 4 MiB)


def sandbox_dirs(root: Path | None = None) -> list[Path]:
    """Every <root>/<namespace>/<sandbox>/ that holds a sandbox record, sorted."""
    root = root if root is not None else paths.STATE_ROOT
    if not root.is_dir():
        return []
    return sorted(
        p
        for ns in root.iterdir()
        if ns.is_dir()
        for p in ns.iterdir()
        if (p / paths.SANDBOX_FILE).exists()
    )


def find_sandbox(ref: str, root: Path | None = None) -> Path:
    """The state dir of sandbox `ref`: an id, or namespace/id when ids repeat across namespaces."""
    namespace, _, sandbox_id = ref.rpartition("/")
    matches = [
        p
        for p in sandbox_dirs(root)
        if p.name == sandbox_id and (not namespace or p.parent.name == namespace)
    ]
    if not matches:
        where = root if root is not None else paths.STATE_ROOT
        raise AdminError(f"no sandbox {ref!r} under {where}")
    if len(matches) > 1:
        names = ", ".join(f"{p.parent.name}/{p.name}" for p in matches)
        raise AdminError(f"sandbox id {ref!r} is in several namespaces ({names}): name one")
    return matches[0]


def monitor_socket(state_dir: Path) -> Path:
    """A sandbox's monitor socket."""
    return state_dir / paths.MONITOR_SOCKET


def ask(
    sandbox: str,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    content_type: str | None = None,
) -> bytes:
    """One request to sandbox `sandbox`'s monitor socket; its errors as AdminError."""
    socket_path = monitor_socket(find_sandbox(sandbox))
    try:
        return shim_client.call(socket_path, method, target, body, content_type=content_type)
    except shim_client.ShimCallError as exc:
        raise AdminError(f"sandbox {sandbox}: {exc}") from None


def list_sandboxes(args: argparse.Namespace) -> int:
    """One line per sandbox on this host."""
    print(f"{'NAMESPACE':<16} {'SANDBOX':<28} {'QEMU PID':>8} {'SHIM PID':>8}  CONTAINERS")
    for state in sandbox_dirs():
        record = json.loads((state / paths.SANDBOX_FILE).read_text())
        qemu = paths.recorded_qemu_pid(state) or "-"
        containers = ",".join(record.get("containers", {})) or "-"
        print(
            f"{state.parent.name:<16} {state.name:<28} {qemu:>8} "
            f"{record.get('shim_pid', '-'):>8}  {containers}"
        )
    return 0


def console(args: argparse.Namespace) -> int:
    """Print the end of a sandbox's guest console log (its last --bytes), and with -f
    follow it, across the trims that keep it capped (shim.vmm.console_log)."""
    log_path = find_sandbox(args.sandbox) / "console.log"
    try:
        f = open(log_path, "rb")  # noqa: SIM115 (held open while following)
    except FileNotFoundError:
        raise AdminError(f"{log_path} does not exist (yet)") from None
    text = None if args.raw else TerminalText()  # the log is the guest's: escape it
    with f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - args.bytes))
        while True:
            data = f.read(CONSOLE_CHUNK)
            if data:
                sys.stdout.buffer.write(data if text is None else text.feed(data))
                sys.stdout.flush()
            elif not args.follow or not log_path.exists():
                if text is not None:
                    sys.stdout.buffer.write(text.flush())
                    sys.stdout.flush()
                return 0
            else:
                time.sleep(0.5)
                _after_trim(f)


def _after_trim(f: BinaryIO) -> None:
    """If the log shrank under a reader at its end, the shim trimmed it: go on after
    what the trim kept, which the reader has printed already."""
    size = os.fstat(f.fileno()).st_size
    if size < f.tell():
        f.seek(0)
        f.seek(console_log.resume_offset(f.read(256), size))


def _byte_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of bytes")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("list", help="running sandboxes").set_defaults(func=list_sandboxes)
    con = sub.add_parser("console", help="a sandbox's guest console log")
    con.add_argument("sandbox", metavar="SANDBOX")
    con.add_argument("-f", "--follow", action="store_true", help="keep printing what comes")
    con.add_argument("--raw", action="store_true", help=RAW_HELP)
    con.add_argument(
        "--bytes",
        type=_byte_count,
        default=CONSOLE_TAIL,
        metavar="N",
        help=f"print the log's last N bytes first (default {CONSOLE_TAIL >> 10} KiB)",
    )
    con.set_defaults(func=console)
