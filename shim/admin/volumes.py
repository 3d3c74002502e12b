"""`direct-volume add|remove|stats|resize`: volumes a CSI driver assigns to pods directly.

`add` and `remove` only write or delete the records (shim.direct_volume). `stats`
and `resize` find the sandbox the runtime recorded next to the mount info and ask
its monitor socket about the volume.

The volume is named by its volume path, which pykata's shim finds among its
containers' mount sources. Kata's client names the mount info's `device` instead,
because Kata's shim replaces such a mount's source with the device when it
attaches it; should pykata attach block devices that way, send the device.
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import quote

from shim import direct_volume
from shim.admin.errors import AdminError
from shim.admin.sandboxes import ask

STATS_TARGET = "/direct-volume/stats"
RESIZE_TARGET = "/direct-volume/resize"
PATH_KEY = "path"


def _sandbox_of(volume_path: str) -> str:
    """The sandbox that uses a volume that was added."""
    try:
        if direct_volume.mount_info(volume_path) is None:
            raise AdminError(f"volume {volume_path} was not added (no mount info)")
        return direct_volume.sandbox_for(volume_path)
    except direct_volume.DirectVolumeError as exc:
        raise AdminError(str(exc)) from None


def add(args: argparse.Namespace) -> int:
    """Record a volume's mount info (JSON: volume-type, device, fstype, metadata, options)."""
    try:
        direct_volume.add(args.volume_path, args.mount_info)
    except direct_volume.DirectVolumeError as exc:
        raise AdminError(str(exc)) from None
    return 0


def remove(args: argparse.Namespace) -> int:
    """Forget a volume (and the sandbox recorded with it)."""
    try:
        direct_volume.remove(args.volume_path)
    except direct_volume.DirectVolumeError as exc:
        raise AdminError(str(exc)) from None
    return 0


def stats(args: argparse.Namespace) -> int:
    """Print the guest's filesystem stats of the volume (JSON from the shim)."""
    sandbox = _sandbox_of(args.volume_path)
    target = f"{STATS_TARGET}?{PATH_KEY}={quote(args.volume_path, safe='')}"
    data = ask(sandbox, "GET", target)
    sys.stdout.buffer.write(data if data.endswith(b"\n") or not data else data + b"\n")
    sys.stdout.flush()
    return 0


def resize(args: argparse.Namespace) -> int:
    """Ask the guest to grow the volume's filesystem to SIZE bytes."""
    sandbox = _sandbox_of(args.volume_path)
    body = json.dumps({"volumePath": args.volume_path, "size": args.size}).encode()
    ask(sandbox, "POST", RESIZE_TARGET, body, content_type="application/json")
    return 0


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    vol = sub.add_parser("direct-volume", help="directly assigned volumes (for CSI drivers)")
    vol_sub = vol.add_subparsers(dest="volume_command", required=True)
    for name, func, what in (
        ("add", add, "record a volume's mount info"),
        ("remove", remove, "forget a volume"),
        ("stats", stats, "filesystem stats of a volume, from inside the guest"),
        ("resize", resize, "resize a volume's filesystem in the guest"),
    ):
        p = vol_sub.add_parser(name, help=what)
        p.add_argument(
            "--volume-path",
            required=True,
            metavar="PATH",
            help="the host path the volume is published to",
        )
        if name == "add":
            p.add_argument(
                "--mount-info", required=True, metavar="JSON", help="the mount info, as JSON"
            )
        if name == "resize":
            p.add_argument(
                "--size", required=True, type=_size, metavar="BYTES", help="the new size in bytes"
            )
        p.set_defaults(func=func)
