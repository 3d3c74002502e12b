#!/usr/bin/env python3
"""VM templates: pods restored from a template against booted ones and against the floor.

    python3 bench/template_bench.py [--runs 5] [--pods 10] [--kernel pykata|debian-cloud]
                                    [--root image|initrd|first-stage] [--tcg-cache MIB]

In one run, medians of:
  - the floor: bare QEMU booting Debian's cloud kernel (the reference every ratio is
    quoted against; `--floor-kernel` for another) with a ~1 MB busybox initrd whose
    init powers off at once, with start_vm's fastest flags (qboot, the fast-boot kernel
    arguments, its TCG CPU model, no legacy devices): what any VM that boots pays;
  - `ctr run --rm IMAGE true` with templates on, and with them off (booted);
  - from the shim's log: QEMU's launch to the restored agent's first answer;
  - PSS of each of a pod's processes (shim daemon, QEMU, virtiofsd, and the hybrid vsock
    daemon where the agent channel is hybrid vsock) for idle pods,
    booted and cloned, one at a time and `--pods` at once;
  - `--pods` clones started at once: until every one ran.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.shim_bench import timed  # noqa: E402
from guest.initrd import pack, tree_entries  # noqa: E402
from integration.containerd_env import PrivateContainerd, _pids_with_arg, import_busybox  # noqa: E402
from integration.pykata_env import (  # noqa: E402
    RUNTIME,
    STATE_ROOT,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from shim.config import parse_config  # noqa: E402
from shim.monitor.procfs import pss_bytes, rollup_bytes  # noqa: E402
from shim.vmm.procs import cmdline  # noqa: E402
from shim.vmm.qemu_args import FAST_BOOT_PARAMS, MACHINE_TRIMS  # noqa: E402
from shim.vmm.vm_config import QBOOT, TCG_CPU_MODEL  # noqa: E402

ASSETS = Path("/usr/share/pykata")
CLOUD_GUEST = Path("/var/cache/pykata/cloud-guest")  # integration/test_cloud_kernel.py's
BUSYBOX = Path("/bin/busybox")
ROOTS = ("image", "initrd", "first-stage")
GUESTS = {"pykata": ASSETS, "debian-cloud": CLOUD_GUEST}  # --kernel: a build's folder


def guest_lines(guest: Path, root: str) -> str:
    """[hypervisor.qemu] lines for pods that boot `guest`'s kernel on `root`."""
    image, initrd = {
        "image": (guest / "pykata-rootfs.img", ""),
        "initrd": ("", guest / "pykata-initrd.img"),
        "first-stage": (guest / "pykata-rootfs.img", guest / "pykata-image-initrd.img"),
    }[root]
    return f'kernel = "{guest / "vmlinuz"}"\nimage = "{image}"\ninitrd = "{initrd}"\n'


def tiny_initrd(path: Path) -> int:
    """A gzip cpio of static busybox and an /init that powers off; its size."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        init = root / "init"
        init.write_text("#!/bin/busybox sh\n/bin/busybox poweroff -f\n")
        init.chmod(0o755)
        raw = pack(tree_entries(root))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as out:
        out.write(raw)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def floor(runs: int, memory_mib: int, initrd: Path, kernel: Path) -> list[float]:
    """Bare QEMU boots of `kernel` to an init that powers off."""
    argv = [
        "qemu-system-x86_64",
        "-machine", ",".join(["q35", "accel=tcg", *MACHINE_TRIMS]),
        "-cpu", TCG_CPU_MODEL,
        "-m", str(memory_mib),
        "-nodefaults", "-nographic", "-no-user-config", "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(["console=ttyS0", "quiet", "panic=-1", *FAST_BOOT_PARAMS]),
    ]
    if os.path.exists(QBOOT):
        argv += ["-bios", QBOOT]
    return [timed(argv, timeout=120) for _ in range(runs)]


def ctr_run_true(cd: PrivateContainerd, image: str, config: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        argv = cd.ctr_argv("run", "--runtime", RUNTIME, "--runtime-config-path", str(config),
                           "--rm", image, f"tb-{i}-{uuid.uuid4().hex[:6]}", "true")
        times.append(timed(argv, timeout=300))
    return times


def first_answers(log_text: str) -> list[float]:
    """From the shim's "vm started" lines of restored VMs: QEMU launch -> agent answer."""
    out = []
    for line in log_text.splitlines():
        if "vm started" not in line or not re.search(r'restored_from["=: ]+"?/', line):
            continue
        found = {k: float(v) for k, v in re.findall(r"(qemu_launched|agent_ready)[\"=:\\ ]+"
                                                    r"([0-9.]+)", line)}
        if len(found) == 2:
            out.append(found["agent_ready"] - found["qemu_launched"])
    return out


def pod_processes(cid: str) -> dict[str, list[int]]:
    shim = subprocess.run(["pgrep", "-f", f"containerd-shim-pykata-v2 .*-id {cid}( |$)"],
                          capture_output=True, text=True).stdout.split()
    state = f"{STATE_ROOT}/"
    argv = {p: " ".join(cmdline(p)) for p in _pids_with_arg(state)}
    vm = [p for p, line in argv.items() if f"/{cid}/" in line]
    return {
        "shim": [int(p) for p in shim],
        "qemu": [p for p in vm if "qemu-system" in argv[p]],
        "virtiofsd": [p for p in vm if "virtiofsd" in argv[p]],
        "vhost-vsock": [p for p in vm if "vhost-device-vsock" in argv[p]],
    }


def memfd_held(pid: int) -> int:
    """Bytes the memfds a process has open hold, mapped or not (each memfd once: QEMU
    has a clone's RAM open twice, as inherited and as opened by its path)."""
    seen: dict[tuple[int, int], int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except OSError:
            continue
    return sum(seen.values())


def unmapped_ram(processes: dict[str, list[int]]) -> int:
    """Guest RAM a pod holds that no process has mapped, so no PSS counts it: a clone's
    copy of the template's RAM, until its guest touches each page."""
    qemu = processes["qemu"]
    held = max((memfd_held(p) for p in qemu), default=0)
    backends = processes["virtiofsd"] + processes["vhost-vsock"]  # they map guest RAM too
    mapped = sum(rollup_bytes(p, "Pss_Shmem") or 0 for p in qemu + backends)
    return max(0, held - mapped)


def idle_pods(cd: PrivateContainerd, image: str, config: Path, count: int,
              settle: float) -> tuple[float, dict[str, float]]:
    """Start `count` idle pods at once; (seconds until all ran, mean PSS MiB per process
    kind per pod). The pods are removed afterwards."""
    cids = [f"tb-idle-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    t0 = time.perf_counter()
    for cid in cids:
        subprocess.run(cd.ctr_argv("run", "-d", "--runtime", RUNTIME, "--runtime-config-path",
                                   str(config), image, cid, "sleep", "3600"),
                       check=False, capture_output=True, timeout=600)
    ran = time.perf_counter() - t0
    try:
        time.sleep(settle)
        totals: dict[str, float] = {"shim": 0.0, "qemu": 0.0, "virtiofsd": 0.0,
                                    "vhost-vsock": 0.0, "unmapped guest RAM": 0.0}
        for cid in cids:
            processes = pod_processes(cid)
            for kind, pids in processes.items():
                totals[kind] += sum(pss_bytes(p) or 0 for p in pids)
            totals["unmapped guest RAM"] += unmapped_ram(processes)
        per_pod = {k: v / count / 2**20 for k, v in totals.items()}
        per_pod["total"] = sum(per_pod.values())
        return ran, per_pod
    finally:
        for cid in cids:
            cd.ctr("task", "kill", "-s", "KILL", cid)
        for cid in cids:
            cd.ctr("task", "rm", "-f", cid, timeout=120)
            cd.ctr("container", "rm", cid)


def at_once(cd: PrivateContainerd, image: str, config: Path, count: int) -> float:
    """`count` ctr run --rm true started together: seconds until the last one ended."""
    t0 = time.perf_counter()
    runs = [subprocess.Popen(cd.ctr_argv("run", "--runtime", RUNTIME, "--runtime-config-path",
                                         str(config), "--rm", image,
                                         f"tb-many-{i}-{uuid.uuid4().hex[:6]}", "true"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(count)]
    failed = [r for r in runs if r.wait(timeout=900) != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} pods failed: {failed[0].stderr.read()}")
    return time.perf_counter() - t0


def line(label: str, values: list[float]) -> str:
    return (f"{label:<46} median {statistics.median(values):7.3f} s   "
            f"min {min(values):7.3f}   max {max(values):7.3f}   (n={len(values)})")


def pss_line(label: str, per_pod: dict[str, float]) -> str:
    parts = "  ".join(f"{k} {v:.1f}" for k, v in per_pod.items() if k != "total")
    return f"{label:<34} {per_pod['total']:6.1f} MiB  ({parts})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--kernel", choices=GUESTS, default="pykata",
                        help="the pods' kernel (and its build): ours, or Debian's cloud "
                             f"kernel built into {CLOUD_GUEST} (with --root initrd or "
                             "first-stage: it cannot mount the image itself)")
    parser.add_argument("--root", choices=ROOTS, default="image",
                        help="the pods' guest root: the image on virtio-pmem mounted by the "
                             "kernel (the default configuration), the whole guest as an "
                             "initrd, or the image behind a first-stage initrd")
    parser.add_argument("--floor-kernel", type=Path, default=None,
                        help="the floor's kernel (default: Debian's cloud kernel, built with "
                             f"--kernel debian-cloud into {CLOUD_GUEST}, the reference the "
                             "ratios are quoted against)")
    parser.add_argument("--tcg-cache", type=int, default=None, metavar="MIB",
                        help="[hypervisor.qemu] tcg_cache_size for the pods (default: the "
                             "configuration's)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds idle pods sit before their PSS is read")
    options = parser.parse_args()
    ensure_shim_on_path()
    ensure_guest_assets()
    if options.kernel == "debian-cloud" and options.root == "image":
        parser.error("Debian's cloud kernel has pmem and ext4 as modules: it cannot mount "
                     "the image itself (--root initrd or --root first-stage)")
    floor_kernel = options.floor_kernel or CLOUD_GUEST / "vmlinuz"
    # (re)built when the pods boot it, so that it carries this checkout's agent (a no-op
    # when nothing changed)
    if options.kernel == "debian-cloud" or (
            options.floor_kernel is None and not floor_kernel.exists()):
        subprocess.run([sys.executable, "-m", "guest", "build", "--kernel", "debian-cloud",
                        "--out", str(CLOUD_GUEST)], cwd=ROOT, check=True, timeout=1800)
    work = Path(tempfile.mkdtemp(prefix="pykata-tb-", dir="/dev/shm"))
    try:
        template = work / "template"
        on = work / "template.toml"
        base = "[hypervisor.qemu]\n" + guest_lines(GUESTS[options.kernel], options.root)
        if options.tcg_cache is not None:
            base += f"tcg_cache_size = {options.tcg_cache}\n"
        on.write_text(base + f'[factory]\nenable_template = true\ntemplate_path = "{template}"\n')
        off = work / "boot.toml"
        off.write_text(base)
        memory = 512
        initrd = work / "tiny-initrd.gz"
        size = tiny_initrd(initrd)
        made = subprocess.run([sys.executable, "-m", "shim.admin", "--config", str(on),
                               "factory", "init"], capture_output=True, text=True, timeout=600)
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        meta = json.loads((template / "template.json").read_text())
        meta["ram_mib"] = (template / "memory").stat().st_blocks * 512 / 2**20
        with PrivateContainerd() as cd:
            image = import_busybox(cd)
            ctr_run_true(cd, image, on, 1)  # warm the page cache and the image
            offset = os.path.getsize(cd.log_path)
            bare = floor(options.runs, memory, initrd, floor_kernel)
            cloned = ctr_run_true(cd, image, on, options.runs)
            booted = ctr_run_true(cd, image, off, options.runs)
            bare += floor(options.runs, memory, initrd, floor_kernel)
            answers = first_answers(Path(cd.log_path).read_text(errors="replace")[offset:])
            _, one_clone = idle_pods(cd, image, on, 1, options.settle)
            _, one_boot = idle_pods(cd, image, off, 1, options.settle)
            many_ran, many_clones = idle_pods(cd, image, on, options.pods, options.settle)
            _, many_boots = idle_pods(cd, image, off, options.pods, options.settle)
            together = at_once(cd, image, on, options.pods)
    finally:
        subprocess.run([sys.executable, "-m", "shim.admin", "--config", str(work / "template.toml"),
                        "factory", "destroy"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    floor_med = statistics.median(bare)
    pods = parse_config(base, "the bench's configuration").hypervisor
    print(f"guest root: {options.root} (image {pods.image or '-'}, initrd {pods.initrd or '-'}); "
          f"TCG translation cache: {pods.tcg_cache_size or 'QEMU default'} MiB")
    print(f"template: {meta['build_seconds']} s to make, "
          f"{meta['ram_mib']:.1f} MiB of guest RAM in use, {memory} MiB VMs")
    print(f"floor kernel: {floor_kernel.resolve().name}; pods' kernel: "
          f"{Path(pods.kernel).resolve().name}")
    print(line(f"floor: bare boot, {size // 1024} KiB busybox initrd", bare))
    print(line("ctr run --rm true, template", cloned))
    print(line("ctr run --rm true, booted", booted))
    print(f"{'template / floor':<46} {statistics.median(cloned) / floor_med:7.2f}x")
    print(f"{'booted / floor':<46} {statistics.median(booted) / floor_med:7.2f}x")
    if answers:
        print(line("restored VM: QEMU launch -> agent's answer", answers))
    print("host memory per idle pod: PSS of each process, plus guest RAM no process has "
          "mapped yet")
    print(pss_line("1 cloned", one_clone))
    print(pss_line("1 booted", one_boot))
    print(pss_line(f"{options.pods} cloned at once", many_clones))
    print(pss_line(f"{options.pods} booted at once", many_boots))
    print(f"{options.pods} idle clones started one after another: all running in "
          f"{many_ran:.1f} s")
    print(f"{options.pods} x ctr run --rm true at once, template: all done in {together:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
