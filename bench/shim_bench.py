#!/usr/bin/env python3
"""pykata end to end: where a pod's seconds and megabytes go.

    python3 bench/shim_bench.py [--runs 5]

Prints medians of:
  - `ctr run --rm IMAGE true` with pykata and with runc, and a bare QEMU boot of
    the same kernel + initrd (init = poweroff) for the ratio;
  - the shim's `start` (reusing a live daemon) and `delete` subcommands;
  - RSS of the shim daemon, QEMU and virtiofsd for one idle pod.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration.containerd_env import (  # noqa: E402
    PrivateContainerd,
    bare_python_dir,
    import_busybox,
)
from integration.pykata_env import (  # noqa: E402
    RUNTIME,
    SHIM_NAME,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from shim.paths import socket_address  # noqa: E402

ASSETS = Path("/usr/share/pykata")


def timed(argv: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - start


def ctr_run_true(cd: PrivateContainerd, image: str, runtime: str | None, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        extra = ["--runtime", runtime] if runtime else []
        argv = cd.ctr_argv("run", *extra, "--rm", image, f"bench-{i}-{os.getpid()}", "true")
        times.append(timed(argv, timeout=300))
    return times


def bare_boot(runs: int) -> list[float]:
    """QEMU boots the same kernel + initrd with busybox poweroff as init (TCG)."""
    times = []
    for _ in range(runs):
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+rdrand",
            "-m",
            "512",
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(ASSETS / "vmlinuz"),
            "-initrd",
            str(ASSETS / "pykata-initrd.img"),
            "-append",
            "console=ttyS0 quiet panic=-1 rdinit=/bin/poweroff -- -f",
        ]
        times.append(timed(argv, timeout=120))
    return times


def start_reuse(shim: list[str], runs: int) -> list[float]:
    """`start` when the pod's daemon already listens: what every extra container pays."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp)
        (bundle / "config.json").write_text(json.dumps({"annotations": {}}))
        address = socket_address(str(bundle / "c.sock"), "bench", "bench-start")
        path = address.removeprefix("unix://")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        try:
            argv = [
                *shim,
                "-namespace",
                "bench",
                "-address",
                str(bundle / "c.sock"),
                "-id",
                "bench-start",
                "start",
            ]
            return [timed(argv, cwd=bundle, stdin=subprocess.DEVNULL) for _ in range(runs)]
        finally:
            listener.close()
            os.unlink(path)


def delete_missing(shim: list[str], runs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [*shim, "-namespace", "bench", "-id", "nothing-here", "-bundle", tmp, "delete"]
        return [timed(argv, cwd=tmp) for _ in range(runs)]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
    return int(match.group(1)) if match else 0


def pids_matching(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def idle_rss(cd: PrivateContainerd, image: str) -> dict[str, int]:
    cid = f"bench-idle-{os.getpid()}"
    run = subprocess.Popen(
        cd.ctr_argv("run", "--runtime", RUNTIME, "--rm", image, cid, "sleep", "600"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if re.search(rf"^{cid}\s+\d+\s+RUNNING", cd.ctr("task", "ls").stdout, re.M):
                break
            time.sleep(0.2)
        time.sleep(3)  # let the guest settle
        found = {
            "shim daemon": pids_matching(f"containerd-shim-pykata-v2 .*-id {cid}"),
            "qemu": pids_matching(f"qemu-system-x86_64.*/run/pykata/.*/{cid}/"),
            "virtiofsd": pids_matching(f"virtiofsd.*/run/pykata/.*/{cid}/"),
        }
        return {name: sum(rss_kib(p) for p in pids) for name, pids in found.items()}
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        run.wait(timeout=120)


def _editable() -> bool:
    """Is pykata installed editable (`make dev`)? Its import hook costs every start ~10 ms."""
    import sysconfig

    return any(Path(sysconfig.get_paths()["purelib"]).glob("__editable__*pykata*"))


def line(label: str, values: list[float], unit: str = "s") -> str:
    scale = 1000 if unit == "ms" else 1
    med = statistics.median(values) * scale
    return (
        f"{label:<44} median {med:8.3f} {unit}   min {min(values) * scale:8.3f}   "
        f"max {max(values) * scale:8.3f}   (n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    installed = [ensure_shim_on_path()]
    ensure_guest_assets()
    with PrivateContainerd() as cd:
        image = import_busybox(cd)
        runc = ctr_run_true(cd, image, None, options.runs)
        pykata = ctr_run_true(cd, image, RUNTIME, options.runs)
        rss = idle_rss(cd, image)
    boot = bare_boot(options.runs)
    start = start_reuse(installed, options.runs * 4)
    delete = delete_missing(installed, options.runs * 4)
    # the checkout's script under a python3 without packages: it re-executes itself
    # with pykata's interpreter (what a containerd started in the checkout pays)
    with tempfile.TemporaryDirectory() as tmp:
        bare = [str(bare_python_dir(Path(tmp)) / "python3"), str(ROOT / SHIM_NAME)]
        start_bare = start_reuse(bare, options.runs * 4)
        delete_bare = delete_missing(bare, options.runs * 4)
    kind = "editable install" if _editable() else "regular install"
    print(line("ctr run --rm true (runc)", runc))
    print(line("ctr run --rm true (pykata)", pykata))
    print(line("bare QEMU boot, same kernel+initrd", boot))
    print(f"{'pykata / runc':<44} {statistics.median(pykata) / statistics.median(runc):8.1f}x")
    print(f"{'pykata / bare boot':<44} {statistics.median(pykata) / statistics.median(boot):8.2f}x")
    print(f"shim as installed: {installed[0]} ({kind})")
    print(line("shim start (daemon already running)", start, "ms"))
    print(line("shim delete (nothing to clean)", delete, "ms"))
    print(line("checkout's shim, bare python3: start", start_bare, "ms"))
    print(line("checkout's shim, bare python3: delete", delete_bare, "ms"))
    for name, kib in rss.items():
        print(f"{'RSS, idle pod: ' + name:<44} {kib / 1024:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
