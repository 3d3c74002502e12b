"""pykata-runtime: what an operator asks of pykata on a host.

pykata-runtime check                    can this host run pykata pods? (exit 1 if not)
pykata-runtime env                      the configuration in force, and where it came from
pykata-runtime list                     running sandboxes: VM pid, containers, state dir
pykata-runtime console SANDBOX          the guest console log (-f to follow)
pykata-runtime exec SANDBOX [CMD...]    a shell or a command in the guest (debug console)
pykata-runtime metrics SANDBOX          the sandbox's Prometheus metrics
pykata-runtime iptables get|set         the guest's iptables (--v6: ip6tables)
pykata-runtime direct-volume ...        add|remove|stats|resize directly assigned volumes
pykata-runtime monitor                  one metrics endpoint for every sandbox of the node
pykata-runtime overhead                 a RuntimeClass with the pod overhead measured here
pykata-runtime factory init|status|destroy  the VM template pods are restored from

Each command group lives in its own module; each registers its parsers and the
function that runs it (args -> exit status).
"""

from __future__ import annotations

import argparse
import sys

from shim.admin import (
    factory_command,
    host,
    node_monitor,
    overhead,
    sandbox_calls,
    sandboxes,
    volumes,
)
from shim.admin.errors import AdminError

PROG = "pykata-runtime"


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    top = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    top.add_argument("--config", default="", help="configuration file (else the search order)")
    sub = top.add_subparsers(dest="command", required=True)
    commands = (host, sandboxes, sandbox_calls, volumes, node_monitor, overhead, factory_command)
    for module in commands:
        module.register(sub)
    return top


def run(argv: list[str] | None = None) -> int:
    """Parse and run one command; AdminError becomes a message on stderr and status 1."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except AdminError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """The `pykata-runtime` entry point: quiet logging, then `run`."""
    import logging

    import structlog

    # warnings only, and on stderr: stdout carries what scripts read (YAML, JSON, metrics)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    return run(argv)
