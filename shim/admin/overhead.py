"""`pykata-runtime overhead`: a RuntimeClass whose podFixed overhead is measured here.

Without --sandbox it boots an idle pod with the configured sizes (shim.admin.idle_pod),
lets it settle, measures it and tears it down; with --sandbox it measures a running
sandbox's shim, QEMU and virtiofsd as they are (containers and all).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

from shim import paths
from shim.admin.errors import AdminError
from shim.admin.measure import MeasureError, Measurement, measure
from shim.admin.runtimeclass import runtime_class_yaml
from shim.admin.sandboxes import find_sandbox

DEFAULT_MARGIN = 10.0
DEFAULT_SECONDS = 5.0
DEFAULT_SETTLE = 5.0  # after boot, before measuring: the guest's boot-time CPU dies down


def sandbox_pids(state_dir: Path) -> dict[str, list[int]]:
    """shim / qemu / virtiofsd / vhost-vsock pids of a running sandbox, from its state
    directory.

    Trusts a pid only while its /proc start time is the one recorded (a recycled
    pid is not the sandbox's).
    """
    from shim.sandbox.record import SandboxRecord
    from shim.vmm import procs
    from shim.vmm.vm_record import load_record

    record = SandboxRecord.load(state_dir)
    if record is None:
        raise AdminError(f"no readable {paths.SANDBOX_FILE} in {state_dir}")
    if not procs.is_running(record.shim_pid, record.shim_started or None):
        raise AdminError(f"the shim of {state_dir.name} (pid {record.shim_pid}) is not running")
    pids = {"shim": [record.shim_pid]}
    vm = load_record(state_dir)
    qemu = vm.processes.get("qemu") if vm else None
    if qemu is None or not procs.is_running(qemu.pid, qemu.start_time):
        raise AdminError(f"the QEMU of {state_dir.name} is not running")
    pids["qemu"] = [qemu.pid]
    virtiofsd = vm.processes.get("virtiofsd") if vm else None
    if virtiofsd is not None and procs.is_running(virtiofsd.pid, virtiofsd.start_time):
        pids["virtiofsd"] = [virtiofsd.pid, *procs.children(virtiofsd.pid)]
    vsock = vm.processes.get("vhost-vsock") if vm else None  # hybrid vsock's daemon
    if vsock is not None and procs.is_running(vsock.pid, vsock.start_time):
        pids["vhost-vsock"] = [vsock.pid]
    return pids


def _qemu_sizes(pid: int) -> str:
    """QEMU's -m and -smp as given on its command line ("" if unreadable)."""
    from shim.vmm import procs

    argv = procs.cmdline(pid)
    found = [f"{a} {argv[i + 1]}" for i, a in enumerate(argv[:-1]) if a in ("-m", "-smp")]
    return ", ".join(found)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" on {socket.gethostname()}"


def measure_sandbox(sandbox: str, seconds: float) -> tuple[Measurement, list[str]]:
    """Measure a running sandbox; returns the measurement and the lines saying what it was."""
    state_dir = find_sandbox(sandbox)
    pids = sandbox_pids(state_dir)
    sizes = _qemu_sizes(pids["qemu"][0])
    notes = [
        f"running sandbox {state_dir.parent.name}/{state_dir.name} ({sizes or 'sizes unknown'})"
        f", {_stamp()}",
        "its containers' memory and CPU inside the guest are counted too",
    ]
    return measure(pids, seconds), notes


async def measure_idle_pod(
    config_path: str, seconds: float, settle: float
) -> tuple[Measurement, list[str]]:
    """Boot an idle pod, wait `settle` s, measure it for `seconds`, tear it down."""
    from shim.admin.idle_pod import idle_pod
    from shim.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise AdminError(f"configuration: {exc}") from None
    hv = config.hypervisor
    print(
        f"booting an idle pod ({hv.default_vcpus} vCPU, {hv.default_memory} MiB)...",
        file=sys.stderr,
    )
    async with idle_pod(config) as pids:
        await asyncio.sleep(settle)
        print(f"measuring for {seconds:g} s...", file=sys.stderr)
        # in a thread: this loop keeps serving the VM's connections, as the shim's would
        measurement = await asyncio.to_thread(measure, pids, seconds)
    notes = [
        f"idle pod booted for this ({hv.default_vcpus} vCPU, {hv.default_memory} MiB,"
        f" shared_fs {hv.shared_fs}, config {config.source}), {_stamp()}",
        f"settled {settle:g} s after boot; 'shim' is the process that held the VM",
    ]
    return measurement, notes


def overhead(args: argparse.Namespace) -> int:
    """Print the RuntimeClass YAML on stdout (progress on stderr)."""
    try:
        if args.sandbox:
            measurement, notes = measure_sandbox(args.sandbox, args.seconds)
        else:
            measurement, notes = asyncio.run(
                measure_idle_pod(args.config, args.seconds, args.settle)
            )
    except MeasureError as exc:
        raise AdminError(f"measurement failed: {exc}") from None
    sys.stdout.write(runtime_class_yaml(measurement, args.margin, notes=notes))
    return 0


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    ovh = sub.add_parser(
        "overhead",
        help="a RuntimeClass with overhead.podFixed measured on this host",
        description="Boots an idle pod (or measures --sandbox), measures the PSS and CPU of "
        "its shim, QEMU and virtiofsd, and prints a RuntimeClass with podFixed set from them.",
    )
    ovh.add_argument(
        "--margin",
        type=_non_negative,
        default=DEFAULT_MARGIN,
        metavar="PERCENT",
        help=f"added to what was measured (default {DEFAULT_MARGIN:g})",
    )
    ovh.add_argument("--sandbox", default="", metavar="ID", help="measure this running sandbox")
    ovh.add_argument(
        "--seconds",
        type=_non_negative,
        default=DEFAULT_SECONDS,
        help=f"measurement length (default {DEFAULT_SECONDS:g})",
    )
    ovh.add_argument(
        "--settle",
        type=_non_negative,
        default=DEFAULT_SETTLE,
        help=f"wait after booting the idle pod (default {DEFAULT_SETTLE:g})",
    )
    ovh.set_defaults(func=overhead)
