#!/usr/bin/env python3
"""Sandbox VM start and stop through shim.vmm.start_vm: N runs, median per stage.

Stages (seconds since start_vm was called): QEMU launched, QMP ready (vCPUs
running), agent port opened by the guest (QMP VSERPORT_CHANGE; virtio-serial only),
first Health/Check answered; then the time RunningVM.stop() takes.

    python3 bench/vm_start_bench.py [-n 5] [--accel auto|kvm|tcg] [--memory 2048]
        [--shared-fs virtio-fs|none] [--firmware auto|""|PATH] [--cpu MODEL] [--debug]
        [--guest DIR ...] [--transport serial|hvsock|vsock|auto ...] [--json]

--guest DIR (a `pykata-image build --out DIR`: its vmlinuz and pykata-initrd.img), given
more than once, boots the guests alternately and prints medians per guest, e.g.
Debian's cloud kernel against pykata's own. --transport (the agent channel, default
auto: what a pod gets), given more than once, does the same for the channels, e.g. virtio-serial
against hybrid vsock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("qemu_launched", "qmp_ready", "port_open", "agent_ready")


async def one_run(args: argparse.Namespace, work: Path, i: int,
                  guest: Path | None = None, transport: str | None = None) -> dict[str, float]:
    from shim.vmm import VMConfig, start_vm
    from shim.vmm.vm_config import DEFAULT_VHOST_VSOCK

    state, shared = work / f"state{i}", work / "shared"
    shared.mkdir(exist_ok=True)
    config = VMConfig(accel=args.accel, memory_mib=args.memory, vcpus=args.vcpus,
                      shared_fs=args.shared_fs, debug=args.debug, firmware=args.firmware,
                      cpu_model=args.cpu, agent_transport=transport or args.transport[0],
                      vhost_vsock_daemon=DEFAULT_VHOST_VSOCK)
    if args.kernel:
        config.kernel = args.kernel
    if args.initrd:
        config.initrd = args.initrd
    if guest is not None:
        config.kernel, config.initrd = str(guest / "vmlinuz"), str(guest / "pykata-initrd.img")
    t0 = time.monotonic()
    vm = await start_vm(config, state, shared)
    started = time.monotonic() - t0
    t1 = time.monotonic()
    await vm.stop()
    row = dict(vm.timings)
    row["start_vm"] = started
    row["stop"] = time.monotonic() - t1
    row["accel"] = vm.accel.accel  # type: ignore[assignment]
    shutil.rmtree(state, ignore_errors=True)
    return row


async def main_async(args: argparse.Namespace) -> int:
    guests: list[Path | None] = list(args.guest) or [None]
    if len(guests) > 1:
        return await compare(args, [(g.name, g, None) for g in guests])  # type: ignore[union-attr]
    if len(args.transport) > 1:
        return await compare(args, [(t, guests[0], t) for t in args.transport])
    work = Path(tempfile.mkdtemp(prefix="pykata-vmbench-"))
    rows = []
    try:
        for i in range(args.n):
            row = await one_run(args, work, i, guests[0])
            rows.append(row)
            if not args.json:
                cells = " ".join(f"{k}={row[k]:.3f}" for k in (*STAGES, "stop") if k in row)
                print(f"run {i + 1}/{args.n} [{row['accel']}]: {cells}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = [k for k in (*STAGES, "start_vm", "stop") if all(k in r for r in rows)]
    medians = {k: round(statistics.median(r[k] for r in rows), 3) for k in keys}
    spread = {k: (round(min(r[k] for r in rows), 3), round(max(r[k] for r in rows), 3))
              for k in keys}
    if args.json:
        print(json.dumps({"runs": rows, "median": medians, "min_max": spread,
                          "options": vars(args)}, indent=2))
    else:
        print(f"\nmedian of {args.n} runs ({rows[0]['accel']}, {args.memory} MiB, "
              f"shared_fs={args.shared_fs}, firmware={args.firmware or 'default'}):")
        for k in keys:
            lo, hi = spread[k]
            print(f"  {k:14s} {medians[k]:7.3f} s   (min {lo:.3f}, max {hi:.3f})")
    return 0


Variant = tuple[str, "Path | None", "str | None"]  # (label, guest, agent transport)


async def compare(args: argparse.Namespace, variants: list[Variant]) -> int:
    """Each variant (a guest, or an agent channel) in turn, N rounds; medians per variant."""
    work = Path(tempfile.mkdtemp(prefix="pykata-vmbench-"))
    labels = [label for label, _, _ in variants]
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    try:
        for i in range(args.n):
            for j, (label, guest, transport) in enumerate(variants):
                row = await one_run(args, work, i * len(variants) + j, guest, transport)
                rows[label].append(row)
                if not args.json:
                    cells = " ".join(f"{k}={row[k]:.3f}" for k in (*STAGES, "stop") if k in row)
                    print(f"run {i + 1}/{args.n} {label} [{row['accel']}]: {cells}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = [k for k in (*STAGES, "start_vm", "stop")
            if all(k in r for label in labels for r in rows[label])]
    medians = {label: {k: round(statistics.median(r[k] for r in rows[label]), 3) for k in keys}
               for label in labels}
    if args.json:
        print(json.dumps({"median": medians, "runs": rows,
                          "options": {**vars(args), "guest": [str(g) for g in args.guest]}},
                         indent=2))
        return 0
    print(f"\nmedian of {args.n} runs each, alternating ({args.memory} MiB):")
    print(f"  {'':14s} " + " ".join(f"{label:>24s}" for label in labels))
    for k in keys:
        print(f"  {k:14s} " + " ".join(f"{medians[label][k]:22.3f} s" for label in labels))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    p.add_argument("--memory", type=int, default=2048, help="MiB")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--shared-fs", default="virtio-fs", choices=("virtio-fs", "none"))
    p.add_argument("--firmware", default="auto", help='"auto" (qboot if installed), "" or path')
    p.add_argument("--cpu", help="CPU model (default: host with KVM, x86-64-v2+rdrand with TCG)")
    p.add_argument("--kernel")
    p.add_argument("--initrd")
    p.add_argument("--guest", type=Path, action="append", default=[],
                   help="a pykata-image out folder (twice or more: alternate between them)")
    p.add_argument("--transport", action="append", default=[],
                   choices=("serial", "hvsock", "vsock", "auto"),
                   help="the agent channel (twice or more: alternate between them)")
    p.add_argument("--debug", action="store_true", help="guest debug (pykata.debug=1)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.transport = args.transport or ["auto"]
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
