"""The shim v2 binary contract: Go-style flags, then `start`, `delete`, or serve.

containerd execs this for every `start` and `delete`, so this module and the
two actions import only the standard library's cheapest parts; the daemon's
heavy imports happen in shim.daemon, after the fork.
"""

from __future__ import annotations

import os
import sys

from shim.handoff import RUNTIME_NAME, VERSION, ShimArgs

# Flags that take a value (Go's flag package: -name value or -name=value).
_VALUE_FLAGS = {
    "namespace": "namespace",
    "id": "id",
    "address": "address",
    "publish-binary": "publish_binary",
    "bundle": "bundle",
    "socket": "socket",
    "debug-socket": "debug_socket",
}
_BOOL_FLAGS = {"debug": "debug", "v": "version", "version": "version", "info": "info"}
_ACTIONS = ("start", "delete")


def parse_args(argv: list[str]) -> ShimArgs:
    """Parse Go-style single- or double-dash flags; unknown flags are ignored.

    An unknown flag swallows the next token as its value unless that token is
    an action or another flag, so newer containerd versions can add flags.
    """
    args = ShimArgs()
    ignored: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            if not args.action:
                args.action = token
            continue
        name, has_value, value = token.lstrip("-").partition("=")
        if name in _VALUE_FLAGS:
            if not has_value:
                if i >= len(argv):
                    raise SystemExit(f"flag needs an argument: -{name}")
                value = argv[i]
                i += 1
            setattr(args, _VALUE_FLAGS[name], value)
        elif name in _BOOL_FLAGS:
            setattr(
                args, _BOOL_FLAGS[name], value.lower() not in ("false", "0") if has_value else True
            )
        else:
            ignored.append(token)
            if not has_value and i < len(argv):
                nxt = argv[i]
                if not nxt.startswith("-") and nxt not in _ACTIONS:
                    ignored.append(nxt)
                    i += 1
    args.ignored = tuple(ignored)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of containerd-shim-pykata-v2."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(f"{os.path.basename(sys.argv[0])}:\n  Runtime: {RUNTIME_NAME}\n  Version: {VERSION}")
        return 0
    if args.info:  # containerd 2.x: no other flags, options (or nothing) on stdin
        from shim.info import info

        return info()
    if not args.namespace:
        sys.stderr.write("containerd-shim-pykata-v2: shim namespace cannot be empty\n")
        return 1
    from shim.interpreter import ensure_dependencies

    problem = ensure_dependencies()
    if problem is not None:
        # containerd puts start's and delete's output into the error ctr prints
        sys.stderr.write(f"containerd-shim-pykata-v2 {args.action or 'daemon'}: {problem}\n")
        return 1
    if args.action == "start":
        from shim.start import start

        return start(args)
    if args.action == "delete":
        from shim.delete import delete

        return delete(args)
    if args.action:
        sys.stderr.write(f"containerd-shim-pykata-v2: unknown action {args.action!r}\n")
        return 1
    from shim.daemon import run

    return run(args)
