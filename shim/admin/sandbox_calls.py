"""Commands that ask one sandbox's shim: `metrics`, `iptables get|set`, and `exec`.

The first two go through the sandbox's monitor socket (the routes Kata's shim
serves); `exec` hands over to the debug console client (shim.debug_console).
"""

from __future__ import annotations

import argparse
import sys

from shim.admin.errors import AdminError
from shim.admin.sandboxes import ask, find_sandbox
from shim.admin.terminal_text import RAW_HELP

IPTABLES_CONTENT_TYPE = "application/octet-stream"  # what Kata's client sends


def _write(data: bytes, *, newline: bool) -> None:
    sys.stdout.buffer.write(data)
    if newline and data and not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def metrics(args: argparse.Namespace) -> int:
    """Print the sandbox's /metrics page (Prometheus text) as the shim serves it."""
    _write(ask(args.sandbox, "GET", "/metrics"), newline=True)
    return 0


def _iptables_target(args: argparse.Namespace) -> str:
    return "/ip6tables" if args.v6 else "/iptables"


def _sandbox_arg(args: argparse.Namespace, positional: list[str]) -> tuple[str, list[str]]:
    """SANDBOX as the first positional, or Kata's --sandbox-id (then every positional is
    what follows SANDBOX)."""
    if args.sandbox_id:
        return args.sandbox_id, positional
    if not positional:
        raise AdminError("which sandbox? give SANDBOX (or --sandbox-id)")
    return positional[0], positional[1:]


def iptables_get(args: argparse.Namespace) -> int:
    """Print the guest's iptables-save (or ip6tables-save) output."""
    sandbox, rest = _sandbox_arg(args, args.args)
    if rest:
        raise AdminError(f"unexpected arguments: {' '.join(rest)}")
    _write(ask(sandbox, "GET", _iptables_target(args)), newline=True)
    return 0


def iptables_set(args: argparse.Namespace) -> int:
    """Replace the guest's rules with FILE (iptables-restore input; - reads stdin)."""
    sandbox, rest = _sandbox_arg(args, args.args)
    if len(rest) != 1:
        raise AdminError("iptables file not provided (give FILE, or - for stdin)")
    source = rest[0]
    if source == "-":
        rules = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as f:
                rules = f.read()
        except OSError as exc:
            raise AdminError(f"cannot read iptables file {source}: {exc.strerror}") from None
    ask(sandbox, "PUT", _iptables_target(args), rules, content_type=IPTABLES_CONTENT_TYPE)
    return 0


def exec_in_guest(args: argparse.Namespace) -> int:
    """A shell (or CMD) in the guest over the debug console, when the sandbox has one."""
    state_dir = find_sandbox(args.sandbox)
    try:
        from shim.debug_console import main_exec
    except ModuleNotFoundError as exc:
        if exc.name != "shim.debug_console":
            raise
        raise AdminError("this pykata has no debug console client (shim.debug_console)") from None
    return main_exec(state_dir, list(args.command), raw=args.raw)


def register(sub: argparse._SubParsersAction) -> None:
    met = sub.add_parser("metrics", help="a sandbox's Prometheus metrics")
    met.add_argument("sandbox", metavar="SANDBOX")
    met.set_defaults(func=metrics)

    ipt = sub.add_parser("iptables", help="get or set iptables inside a sandbox's guest")
    ipt_sub = ipt.add_subparsers(dest="iptables_command", required=True, metavar="{get,set}")
    for name, func, what, usage in (
        ("get", iptables_get, "print the guest's rules", "[--v6] SANDBOX"),
        ("set", iptables_set, "load rules from FILE (- for stdin)", "[--v6] SANDBOX FILE"),
    ):
        p = ipt_sub.add_parser(name, help=what, usage=f"%(prog)s {usage}")
        p.add_argument("--v6", action="store_true", help="ip6tables instead of iptables")
        p.add_argument("--sandbox-id", default="", help=argparse.SUPPRESS)  # Kata's spelling
        p.add_argument("args", nargs="*", metavar="ARG", help=usage.removeprefix("[--v6] "))
        p.set_defaults(func=func)

    exe = sub.add_parser(
        "exec",
        usage="%(prog)s [--raw] SANDBOX [CMD ...]",
        help="a shell or one command in a sandbox's guest (debug console)",
        description="Needs debug_console_enabled = true in the configuration.",
    )
    exe.add_argument("--raw", action="store_true", help=RAW_HELP)
    exe.add_argument("sandbox", metavar="SANDBOX")
    exe.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="default: a shell")
    exe.set_defaults(func=exec_in_guest)
