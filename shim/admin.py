"""pykata-runtime: what an operator asks of pykata on a host.

pykata-runtime check            can this host run pykata pods? (exit 1 if not)
pykata-runtime env              the configuration in force, and where it came from
pykata-runtime list             running sandboxes: VM pid, containers, state dir
pykata-runtime console SANDBOX  the guest console log (-f to follow)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shim.config import ConfigError, HypervisorConfig, load_config
from shim.paths import SANDBOX_FILE, STATE_ROOT, recorded_qemu_pid


def _line(ok: bool | None, what: str, detail: str) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "info"}[ok]
    print(f"[{mark}] {what:<28} {detail}")


def _protections(hv: HypervisorConfig, cache: Any) -> None:
    """Lines for the confinement QEMU and virtiofsd get here: `ok` when on, `info` when
    off. Never a failure (pods run without them), so they leave the exit status alone."""
    from shim.vmm import hostcaps
    from shim.vmm.qemu_args import SECCOMP
    from shim.vmm.virtiofsd import option_value

    if os.path.exists(hv.path):
        on, detail = hostcaps.probe_seccomp(hv.path, cache)
        if on:
            on, detail = hostcaps.qemu_sandbox_active(hv.path, SECCOMP)
        _line(True if on else None, "QEMU -sandbox", f"on ({detail})" if on else f"off: {detail}")
    if hv.shared_fs != "virtio-fs" or not os.path.exists(hv.virtio_fs_daemon):
        return
    choice = hostcaps.probe_virtiofsd(hv.virtio_fs_daemon, cache)
    for option, probed, detail in (
        ("--sandbox", choice.sandbox, choice.sandbox_detail),
        ("--seccomp", choice.seccomp, choice.seccomp_detail),
    ):
        mode = option_value(hv.virtio_fs_extra_args, option)
        if mode:
            detail = f"set by virtio_fs_extra_args; the probe chose {probed or 'nothing'}"
        mode = mode or probed
        on = None if mode in (None, "none") else True
        _line(on, f"virtiofsd {option}", f"{mode or 'unknown'} ({detail})")


def check(config_path: str) -> int:
    """Every host requirement, one line each; exit 1 when any is missing."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _line(False, "configuration", str(exc))
        return 1
    _line(True, "configuration", config.source)
    hv = config.hypervisor
    failures = 0
    for what, path in (
        ("QEMU", hv.path),
        ("guest kernel", hv.kernel),
        ("guest initrd", hv.initrd),
        ("virtiofsd", hv.virtio_fs_daemon if hv.shared_fs == "virtio-fs" else None),
        ("containerd", shutil.which("containerd")),
        ("shim on PATH", shutil.which("containerd-shim-pykata-v2")),
    ):
        if path is None and what == "virtiofsd":
            continue
        ok = bool(path) and os.path.exists(path)
        failures += not ok
        fix = "" if ok else "  (make setup installs it)"
        _line(ok, what, f"{path or 'not found'}{fix}")
    from shim.vmm.accel import choose_accel
    from shim.vmm.hostcaps import HostCapsCache

    cache = HostCapsCache(STATE_ROOT) if os.access(STATE_ROOT.parent, os.W_OK) else None
    if cache is not None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
    choice = asyncio.run(choose_accel(hv.accel, hv.path, hv.kernel, cache=cache))
    _line(None, "accelerator", f"{choice.accel} ({choice.reason})")
    vsock = os.path.exists("/dev/vhost-vsock")
    _line(None, "agent channel", "vsock" if vsock else "virtio-serial (no /dev/vhost-vsock)")
    _line(None, "vhost-net", "yes" if os.path.exists("/dev/vhost-net") else "no")
    _protections(hv, cache)
    print("host can run pykata pods" if not failures else f"{failures} requirement(s) missing")
    return 1 if failures else 0


def env(config_path: str) -> int:
    """The configuration in force as JSON."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(config), indent=2))
    return 0


def _sandboxes() -> list[Path]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(
        p
        for ns in STATE_ROOT.iterdir()
        if ns.is_dir()
        for p in ns.iterdir()
        if (p / SANDBOX_FILE).exists()
    )


def list_sandboxes() -> int:
    """One line per sandbox on this host."""
    rows = _sandboxes()
    print(f"{'NAMESPACE':<16} {'SANDBOX':<28} {'QEMU PID':>8} {'SHIM PID':>8}  CONTAINERS")
    for state in rows:
        record = json.loads((state / SANDBOX_FILE).read_text())
        qemu = recorded_qemu_pid(state) or "-"
        containers = ",".join(record.get("containers", {})) or "-"
        print(
            f"{state.parent.name:<16} {state.name:<28} {qemu:>8} "
            f"{record.get('shim_pid', '-'):>8}  {containers}"
        )
    return 0


def console(sandbox: str, follow: bool) -> int:
    """Print (and optionally follow) a sandbox's guest console log."""
    matches = [p for p in _sandboxes() if p.name == sandbox]
    if not matches:
        print(f"no sandbox {sandbox!r} under {STATE_ROOT}", file=sys.stderr)
        return 1
    log_path = matches[0] / "console.log"
    with open(log_path, "rb") as f:
        while True:
            data = f.read()
            if data:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            elif not follow or not log_path.exists():
                return 0
            else:
                time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykata-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="", help="configuration file (else the search order)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="can this host run pykata pods?")
    sub.add_parser("env", help="the configuration in force")
    sub.add_parser("list", help="running sandboxes")
    con = sub.add_parser("console", help="a sandbox's guest console log")
    con.add_argument("sandbox")
    con.add_argument("-f", "--follow", action="store_true")
    args = parser.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.command == "check":
        return check(args.config)
    if args.command == "env":
        return env(args.config)
    if args.command == "list":
        return list_sandboxes()
    return console(args.sandbox, args.follow)


if __name__ == "__main__":
    sys.exit(main())
