"""Progress output of the image builder (plain lines on stderr)."""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()
_verbose = False


def set_verbose(on: bool) -> None:
    """Print the detail lines too."""
    global _verbose
    _verbose = on


def step(msg: str) -> None:
    """A phase of the build starts."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def info(msg: str) -> None:
    """A line inside a phase."""
    print(f"          {msg}", file=sys.stderr, flush=True)


def detail(msg: str) -> None:
    """A line shown only with --verbose."""
    if _verbose:
        info(msg)


def size(n: int) -> str:
    """Human readable byte count."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


class BuildError(RuntimeError):
    """A build failure with a message meant for the user."""
