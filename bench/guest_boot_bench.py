#!/usr/bin/env python3
"""Guest boot phases: boots the self-test image N times under QEMU (TCG), prints medians.

    python3 bench/guest_boot_bench.py [--runs 3] [--out DIR] [--compression gzip|none]
                                      [--kernel debian-cloud|pykata ...]
                                      [--no-virtiofs] [--qemu-arg ARG ...]
                                      [--append-extra "kernel args"] [--json]

With --kernel given twice (``--kernel debian-cloud --kernel pykata``) both guests are
built (``DIR/<compression>-<kernel>``) and booted alternately, one column each.

Figures (medians): initrd size; kernel start -> /init; /init -> modules loaded;
Python start-up; imports (protobuf, ttrpc, protos, stdlib); guest uptime at the
self-test line; wall time from QEMU launch to PYKATA-SELFTEST-OK; guest memory
used (MemTotal - MemAvailable); the guest RAM the kernel keeps (its boot line
"Memory: ... K reserved", and its code).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guest import boot, builder, virtiofsd  # noqa: E402
from guest.debs import DEFAULT_CACHE  # noqa: E402

ROWS = [  # (label, how to get it from the fields of one run)
    ("kernel start -> /init (s)", lambda f: float(f["t_init"])),
    ("/init -> modules loaded (s)", lambda f: float(f["t_modules"]) - float(f["t_init"])),
    ("python start-up (s)", lambda f: float(f["py_start"])),
    ("import protobuf runtime (s)", lambda f: float(f["imp_protobuf"])),
    ("import ttrpc + its pb2 (s)", lambda f: float(f["imp_ttrpc"])),
    ("import protos + all pb2 (s)", lambda f: float(f["imp_protos"])),
    ("import asyncio json logging socket subprocess (s)", lambda f: float(f["imp_stdlib"])),
    ("imports total (s)", lambda f: float(f["imports_total"])),
    ("guest uptime at SELFTEST-OK (s)", lambda f: float(f["t_ok"])),
    ("guest memory used (MiB)", lambda f: int(f["mem_used_kb"]) / 1024),
    ("kernel: RAM reserved (MiB)", lambda f: int(f.get("kmem_reserved_kb", 0)) / 1024),
    ("kernel: code (MiB)", lambda f: int(f.get("kmem_code_kb", 0)) / 1024),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/var/cache/pykata/bench-image"))
    p.add_argument("--compression", choices=("gzip", "none"), default="gzip")
    p.add_argument("--kernel", action="append", choices=builder.KERNELS,
                   help="guest kernel (twice: both, booted alternately)")
    p.add_argument("--no-virtiofs", action="store_true")
    p.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument")
    p.add_argument("--append-extra", default="", help="more kernel command line")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    kernels = args.kernel or [builder.DEFAULT_KERNEL]
    outs, manifests = {}, {}
    for k in kernels:
        # the default kernel keeps the folder it always had
        outs[k] = args.out / (args.compression if k == builder.DEFAULT_KERNEL and not args.kernel
                              else f"{args.compression}-{k}")
        manifests[k] = builder.build(outs[k], DEFAULT_CACHE, compression=args.compression,
                                     kernel_flavour=k)
    vfsd = None
    if not args.no_virtiofs:
        vfsd = virtiofsd.install(Path("/var/cache/pykata/test-virtiofsd"), DEFAULT_CACHE)
    runs: dict[str, list] = {k: [] for k in kernels}
    for i in range(args.runs):
        for k in kernels:  # alternately, so that a drift of the host hits both alike
            r = boot.boot_selftest(outs[k], virtiofsd=vfsd, extra_args=tuple(args.qemu_arg),
                                   append=f"{boot.APPEND} {args.append_extra}".strip())
            if not r.ok:
                print(f"run {i + 1} ({k}): self-test failed: {r.line or r.console[-3000:]}",
                      file=sys.stderr)
                return 1
            runs[k].append(r)
            print(f"run {i + 1} ({k}): wall {r.wall:.2f}s, guest {r.fields['t_ok']}s, "
                  f"/init at {r.fields['t_init']}s", file=sys.stderr)

    table: dict[str, dict[str, float]] = {}
    for k in kernels:
        m = manifests[k]
        figures = {"initrd size (MiB)": m["initrd"]["size"] / 2**20,
                   "initrd unpacked (MiB)": m["initrd"]["uncompressed_size"] / 2**20,
                   "kernel size (MiB)": m["kernel"]["size"] / 2**20}
        for label, get in ROWS:
            figures[label] = statistics.median(get(r.fields) for r in runs[k])
        figures["wall: QEMU launch -> SELFTEST-OK (s)"] = statistics.median(
            r.wall for r in runs[k])
        figures["wall: QEMU launch -> QEMU exit (s)"] = statistics.median(
            r.exit_wall for r in runs[k])
        table[k] = figures
    if args.json:
        print(json.dumps(table if len(kernels) > 1 else table[kernels[0]], indent=2))
    else:
        print(f"guest boot, {args.runs} runs, {args.compression} initrd, medians:")
        print(f"  {'':<52} " + " ".join(f"{k:>13}" for k in kernels))
        for label in table[kernels[0]]:
            print(f"  {label:<52} " + " ".join(f"{table[k][label]:13.2f}" for k in kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
