"""The agent's settings: command-line flags, and Kata's `agent.log=` and
`agent.debug_console` on the kernel command line."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from pykata_common.contract import (
    AGENT_PORT_NAME,
    AGENT_VSOCK_PORT,
    DEBUG_CONSOLE_PARAM,
    DEBUG_CONSOLE_PORT_NAME,
    GUEST_SHARED_DIR,
    KATA_RUN_DIR,
    PREWARM_PARAM,
    SHARED_SUBDIR,
)


class Config:
    """The agent's settings. A plain class, not a dataclass: a dataclass compiles its
    methods when the module loads, which under TCG costs every booted VM ~40 ms."""

    listen: str | None = None  # unix:///path, vsock://PORT, serial:///dev/vportNpM; None: detect
    run_dir: str = KATA_RUN_DIR  # bundles: <run_dir>/<container id>
    shared_dir: str = GUEST_SHARED_DIR  # the host's shared directory
    runc: str = "runc"
    runc_root: str = "/run/runc"
    cgroup_parent: str = "/pykata"  # container cgroups: <cgroup_parent>/<container id>
    cgroup_root: str = "/sys/fs/cgroup"
    resolv_conf: str = "/etc/resolv.conf"
    poweroff: bool = False  # power the VM off after DestroySandbox
    output_limit: int = 1 << 20  # bytes buffered per stdout/stderr before back-pressure
    log_level: str = "info"
    debug_console: str | None = None  # serve a shell on this port (name or /dev path)
    prewarm: bool = False  # do the first container's one-time work before serving

    def __init__(self, **settings: object) -> None:
        for name, value in settings.items():
            if name not in _SETTINGS:
                raise TypeError(f"Config has no setting {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in _SETTINGS)
        return f"Config({values})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and all(
            getattr(self, name) == getattr(other, name) for name in _SETTINGS
        )


_SETTINGS = tuple(Config.__annotations__)


def kernel_params(cmdline: str = "/proc/cmdline") -> list[str]:
    """The words of the kernel command line ([] when it cannot be read)."""
    try:
        with open(cmdline) as text:
            return text.read().split()
    except OSError:
        return []


def kernel_log_level(words: list[str]) -> str | None:
    """`agent.log=LEVEL` from the kernel command line, as Kata's agent reads it."""
    for word in words:
        if word.startswith("agent.log="):
            return word.split("=", 1)[1]
    return None


def kernel_flag(words: list[str], flag: str) -> bool:
    """`flag` (or `flag=1|true|on|yes`) is on the kernel command line."""
    for word in words:
        name, equals, value = word.partition("=")
        if name == flag:
            return not equals or value.lower() in ("1", "true", "on", "yes")
    return False


def kernel_debug_console(words: list[str]) -> bool:
    """`agent.debug_console` (or `agent.debug_console=1|true|on`) is there."""
    return kernel_flag(words, DEBUG_CONSOLE_PARAM)


def _flags(argv: list[str]) -> SimpleNamespace:
    """The command-line flags; without any (the agent as the VM's PID 1), their
    defaults, without loading argparse (which costs the guest's boot ~70 ms)."""
    defaults = Config()
    if not argv:
        return SimpleNamespace(
            listen=None, run_dir=defaults.run_dir, shared_dir=None, runc=defaults.runc,
            runc_root=defaults.runc_root, cgroup_parent=defaults.cgroup_parent,
            cgroup_root=defaults.cgroup_root, resolv_conf=defaults.resolv_conf,
            poweroff=None, output_limit=defaults.output_limit, log_level=None,
            debug_console=None,
        )
    import argparse

    parser = argparse.ArgumentParser(
        prog="python3 -m agent",
        description="pykata guest agent: Kata's agent API over ttrpc, containers run with runc.",
    )
    parser.add_argument(
        "--listen",
        help="unix:///path, vsock://PORT or serial:///dev/vportNpM (default: vsock port "
        f"{AGENT_VSOCK_PORT} if the VM has vsock, else the virtio-serial port {AGENT_PORT_NAME})",
    )
    parser.add_argument("--run-dir", default=defaults.run_dir, help="container bundles")
    parser.add_argument(
        "--shared-dir",
        help=f"container root filesystems shared by the host (default: RUN_DIR/{SHARED_SUBDIR})",
    )
    parser.add_argument("--runc", default=defaults.runc, help="runc binary")
    parser.add_argument("--runc-root", default=defaults.runc_root, help="runc's state directory")
    parser.add_argument("--cgroup-parent", default=defaults.cgroup_parent)
    parser.add_argument("--cgroup-root", default=defaults.cgroup_root)
    parser.add_argument("--resolv-conf", default=defaults.resolv_conf)
    parser.add_argument(
        "--poweroff",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="power the VM off after DestroySandbox (default: only when PID 1)",
    )
    parser.add_argument("--output-limit", type=int, default=defaults.output_limit)
    parser.add_argument(
        "--log-level", help="debug, info, warning, error (default: agent.log= or info)"
    )
    parser.add_argument(
        "--debug-console",
        metavar="PORT",
        help=f"serve a shell on this virtio-serial port (name or /dev path; default: "
        f"{DEBUG_CONSOLE_PORT_NAME} when the kernel command line has {DEBUG_CONSOLE_PARAM})",
    )
    return SimpleNamespace(**vars(parser.parse_args(argv)))


def parse(argv: list[str] | None = None) -> Config:
    """Flags to a Config. Defaults are those of the agent inside the VM."""
    args = _flags(sys.argv[1:] if argv is None else argv)
    words = kernel_params()
    run_dir = os.path.abspath(args.run_dir)
    return Config(
        listen=args.listen,
        run_dir=run_dir,
        shared_dir=os.path.abspath(args.shared_dir or os.path.join(run_dir, SHARED_SUBDIR)),
        runc=args.runc,
        runc_root=os.path.abspath(args.runc_root),
        cgroup_parent="/" + args.cgroup_parent.strip("/"),
        cgroup_root=args.cgroup_root,
        resolv_conf=args.resolv_conf,
        poweroff=os.getpid() == 1 if args.poweroff is None else args.poweroff,
        output_limit=args.output_limit,
        log_level=(args.log_level or kernel_log_level(words) or "info").lower(),
        debug_console=args.debug_console
        or (DEBUG_CONSOLE_PORT_NAME if kernel_debug_console(words) else None),
        prewarm=kernel_flag(words, PREWARM_PARAM),
    )
