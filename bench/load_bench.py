#!/usr/bin/env python3
"""pykata under load: many pods at once, then many `ctr run --rm` cycles in a row.

    python3 bench/load_bench.py [--pods 10] [--cycles 100]

Each pod has its own netns (a veth, 198.18.<i>.0/24) and prints its index and
eth0 address from inside its VM. Prints: time for all pods at once, time per
cycle (median, p90, max), the peak summed PSS of pykata's processes (shims,
QEMU, virtiofsd) and of the machine, and every leak found afterwards: processes,
mounts, taps and tc filters, state dirs, /run/containerd/s sockets.
A failed pod or a leak makes the exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration.containerd_env import PrivateContainerd, import_busybox  # noqa: E402
from integration.load_env import run_load  # noqa: E402
from integration.pykata_env import ensure_guest_assets, ensure_shim_on_path  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10, help="pods started at once")
    parser.add_argument("--cycles", type=int, default=100, help="ctr run --rm in a row")
    parser.add_argument("--runc-cycles", type=int, default=10,
                        help="the same cycles with runc, for the ratio")
    args = parser.parse_args()
    ensure_shim_on_path()
    ensure_guest_assets()
    with tempfile.TemporaryDirectory(prefix="pk-load-") as work, PrivateContainerd() as cd:
        image = import_busybox(cd)
        report, left = run_load(cd, image, pods=args.pods, cycle_count=args.cycles,
                                runc_cycles=args.runc_cycles, workdir=Path(work))
    runs = report.pods_at_once + report.cycles + report.runc_cycles
    bad = [run for run in runs if not run.correct()]
    at_once = sorted(run.seconds for run in report.pods_at_once)
    if at_once:
        print(f"{args.pods} pods at once: all done in {report.at_once_seconds:.1f} s (first "
              f"{at_once[0]:.1f} s, last {at_once[-1]:.1f} s), peak {report.peak_vms} VMs")
    per, runc = report.cycle_seconds(), report.cycle_seconds(report.runc_cycles)
    if per:
        print(f"{args.cycles} cycles of ctr run --rm: median {per['median']:.2f} s, "
              f"p90 {per['p90']:.2f} s, max {per['max']:.2f} s, total {per['total']:.0f} s")
    if per and runc:
        print(f"{args.runc_cycles} with runc: median {runc['median']:.3f} s "
              f"(pykata/runc {per['median'] / runc['median']:.0f}x)")
    print(f"peak PSS of pykata's processes: {report.peak_pss_mib:.0f} MiB "
          f"({report.peak_pss_mib / max(report.peak_vms, 1):.0f} MiB per running pod); "
          f"the machine's MemAvailable fell by {report.peak_machine_mib:.0f} MiB at most")
    print(f"failed pods: {len(bad)}")
    for run in bad[:5]:
        print(f"  pod {run.index}: status {run.returncode}: {run.stdout!r} {run.stderr[-400:]}")
    print(f"leaks: {left or 'none'}")
    return 1 if bad or left else 0


if __name__ == "__main__":
    sys.exit(main())
