#!/usr/bin/env python3
"""Container life in a real guest, as the host sees it: medians per agent call.

Boots the guest once (shim.vmm.start_vm, virtiofs share with a busybox rootfs),
CreateSandbox, then for each of N containers (after one warm-up container, whose
figures are shown apart: it pays the agent's first-use imports):

    CreateContainer   init `sleep 600`
    StartContainer
    Exec              ExecProcess `true` until its WaitProcess answered
    Stats             StatsContainer
    Kill              SignalProcess(SIGKILL) to the init until its WaitProcess answered
    RemoveContainer   of the stopped container (as after `ctr run --rm`)

then DestroySandbox. Wall times of each call (ttrpc round trip included).

    python3 bench/container_create_bench.py [-n 10] [--runtime crun|runc|auto]
        [--kernel PATH] [--initrd PATH] [--memory 512] [--template DIR] [--debug] [--json]

--runtime puts PYKATA_OCI_RUNTIME=<name> on the kernel command line (the kernel
hands it to /init, which hands it to the agent); auto leaves it off, the agent
then picks crun if the image has it, else runc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = ("create", "start", "exec", "stats", "kill", "remove")
APPLETS = ("sh", "true", "sleep", "echo", "cat")


def busybox_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    for folder in ("proc", "sys", "dev", "tmp", "etc"):
        (root / folder).mkdir()


def spec(rootfs: str, args: list[str]):  # -> oci_pb2.Spec
    from protos.kata import oci_pb2

    return oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(
            Args=args, Env=["PATH=/bin"], Cwd="/", User=oci_pb2.User(UID=0, GID=0)
        ),
        Hostname="bench",
        Root=oci_pb2.Root(Path=rootfs),
        Mounts=[
            oci_pb2.Mount(destination="/proc", type="proc", source="proc"),
            oci_pb2.Mount(
                destination="/dev", type="tmpfs", source="tmpfs",
                options=["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
        ],
        Linux=oci_pb2.Linux(
            Namespaces=[oci_pb2.LinuxNamespace(Type=t) for t in ("pid", "mount", "ipc", "uts")],
            Resources=oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=64 << 20)),
        ),
    )  # fmt: skip


async def one_container(agent, cid: str, rootfs: str) -> dict[str, float]:
    from protos.kata import agent_pb2, oci_pb2

    row: dict[str, float] = {}

    async def timed(step: str, call) -> object:
        t = time.monotonic()
        answer = await call
        row[step] = time.monotonic() - t
        return answer

    await timed(
        "create",
        agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=cid, exec_id=cid, OCI=spec(rootfs, ["sleep", "600"])
            ),
            timeout=120,
        ),
    )
    await timed(
        "start", agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    )
    t = time.monotonic()
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(
            container_id=cid,
            exec_id="e1",
            process=oci_pb2.Process(Args=["true"], Env=["PATH=/bin"], Cwd="/"),
        ),
        timeout=60,
    )
    status = (
        await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id="e1"), timeout=60
        )
    ).status
    row["exec"] = time.monotonic() - t
    if status != 0:
        raise RuntimeError(f"{cid}: exec `true` exited {status}")
    stats = await timed(
        "stats", agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid), timeout=60)
    )
    limit = stats.cgroup_stats.memory_stats.usage.limit  # type: ignore[attr-defined]
    if limit != 64 << 20:
        raise RuntimeError(f"{cid}: stats say memory limit {limit}, not {64 << 20}")
    t = time.monotonic()
    await agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id=cid, exec_id=cid, signal=signal.SIGKILL),
        timeout=30,
    )
    status = (
        await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=60
        )
    ).status
    row["kill"] = time.monotonic() - t
    if status != 128 + signal.SIGKILL:
        raise RuntimeError(f"{cid}: init exited {status}, not 137")
    await timed(
        "remove",
        agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id=cid), timeout=60),
    )
    return row


async def main_async(args: argparse.Namespace) -> int:
    from integration.agent_stubs import AgentStub
    from protos.kata import agent_pb2
    from pykata_common.contract import GUEST_SHARED_DIR, SHARED_FS_TAG
    from shim.vmm import VMConfig, start_vm

    work = Path(tempfile.mkdtemp(prefix="pykata-ccbench-"))
    state, shared = work / "state", work / "shared"
    shared.mkdir()
    busybox_rootfs(shared / "rootfs")
    params = [] if args.runtime == "auto" else [f"PYKATA_OCI_RUNTIME={args.runtime}"]
    config = VMConfig(memory_mib=args.memory, kernel_params=params, debug=args.debug)
    if args.kernel:
        config.kernel = args.kernel
    if args.initrd:
        config.initrd = args.initrd
    if args.template:
        config.template_path = args.template
    rootfs = f"{GUEST_SHARED_DIR}/rootfs"  # one rootfs, read-only use, for every container
    rows: list[dict[str, float]] = []
    t0 = time.monotonic()
    vm = await start_vm(config, state, shared)
    boot = time.monotonic() - t0
    try:
        agent = AgentStub(vm.agent)  # every call by name, each with its own deadline
        t1 = time.monotonic()
        await agent.CreateSandbox(
            agent_pb2.CreateSandboxRequest(
                hostname="bench",
                sandbox_id="bench",
                storages=[
                    agent_pb2.Storage(
                        driver="virtio-fs", source=SHARED_FS_TAG, fstype="virtiofs",
                        mount_point=GUEST_SHARED_DIR,
                    )
                ],
            ),
            timeout=60,
        )  # fmt: skip
        sandbox = time.monotonic() - t1
        for i in range(args.n + 1):
            rows.append(await one_container(agent, f"bench{i}", rootfs))
            if not args.json:
                print(
                    f"  {'warm-up' if i == 0 else f'#{i}':>7}  "
                    + "  ".join(f"{k} {v:6.3f}" for k, v in rows[-1].items()),
                    file=sys.stderr,
                )
        await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=60)
    finally:
        await vm.stop()
        console = vm.console_log
        if args.debug and console.exists():
            for line in console.read_text(errors="replace").splitlines():
                if "agent" in line and (" took " in line or "runtime" in line):
                    print("  guest:", line, file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    measured = rows[1:]
    summary = {
        "runtime": args.runtime,
        "n": len(measured),
        "boot": boot,
        "restored": vm.restored,
        "create_sandbox": sandbox,
        "first": rows[0],
        "median": {k: statistics.median(r[k] for r in measured) for k in STEPS},
        "min": {k: min(r[k] for r in measured) for k in STEPS},
        "max": {k: max(r[k] for r in measured) for k in STEPS},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"runtime {args.runtime}: VM {'restored' if vm.restored else 'booted'} in {boot:.2f} s, "
        f"CreateSandbox {sandbox:.3f} s; {len(measured)} containers "
        "after one warm-up (seconds, host wall time per call)"
    )
    print(f"{'step':<10} {'median':>8} {'min':>8} {'max':>8} {'warm-up':>8}")
    for k in STEPS:
        print(
            f"{k:<10} {summary['median'][k]:8.3f} {summary['min'][k]:8.3f} "
            f"{summary['max'][k]:8.3f} {rows[0][k]:8.3f}"
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10, help="containers measured (after one warm-up)")
    p.add_argument("--runtime", default="auto", help="crun, runc or auto (default auto)")
    p.add_argument("--kernel", help="guest kernel (default: the installed image's)")
    p.add_argument("--initrd", help="guest initrd (default: the installed image's)")
    p.add_argument("--memory", type=int, default=512, help="guest MiB (default 512)")
    p.add_argument("--template", help="restore the VM from the template in this directory")
    p.add_argument("--debug", action="store_true", help="agent.log=debug; show its timings")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.n < 1:
        p.error("-n must be at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
