"""Shared helpers for the agent tests: a busybox rootfs, specs, the agent as a subprocess.

The agent runs under `unshare --mount --uts --net`: its hostname, its mounts
and its network are its own, so nothing it does reaches the host's. Its runtime
state, bundles and shared directory live in the test's tmp_path, its cgroups
under a parent named after the test run; stop() removes them all.

Each agent runs one OCI runtime (RUNTIMES: runc, and crun when installed),
chosen with $PYKATA_OCI_RUNTIME as in the guest. crun refuses a hybrid cgroup
layout whose cgroup2 (`unified`) holds a controller (this host's has hugetlb;
the guest's holds none): for crun the agent's mount namespace gets an empty
tmpfs over `unified`, so crun, like the guest's, sees v1 controllers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import ttrpc
from protos.kata import agent_pb2, health_pb2, oci_pb2

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = "/bin/busybox"
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
NAMESPACES = ("pid", "mount", "ipc", "uts", "network")
CGROUP_ROOT = "/sys/fs/cgroup"
RUNTIMES = tuple(name for name in ("runc", "crun") if shutil.which(name))


def unified_has_controllers() -> bool:
    try:
        return bool(Path(CGROUP_ROOT, "unified", "cgroup.controllers").read_text().split())
    except OSError:
        return False


def missing_requirements() -> str | None:
    """Why the agent tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("runc", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists(BUSYBOX):
        return f"needs {BUSYBOX} (busybox-static)"
    return None


requires_agent_host = pytest.mark.skipif(
    missing_requirements() is not None, reason=missing_requirements() or ""
)


def build_rootfs(folder: Path) -> Path:
    """A busybox root filesystem: /bin/busybox and a symlink per applet."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to("busybox")
    for name in ("proc", "sys", "dev", "tmp", "etc", "data"):
        (folder / name).mkdir(exist_ok=True)
    (folder / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (folder / "etc" / "group").write_text("root:x:0:\n")
    return folder


def spec(
    args: list[str],
    *,
    terminal: bool = False,
    env: tuple[str, ...] = ("PATH=/bin",),
    root: str = "rootfs",
    hostname: str = "",
    memory_limit: int = 0,
    mounts: tuple[oci_pb2.Mount, ...] = (),
    cwd: str = "/",
) -> oci_pb2.Spec:
    """A minimal OCI spec like containerd's, for the busybox rootfs."""
    resources = oci_pb2.LinuxResources(
        Devices=[oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm")]
    )
    if memory_limit:
        resources.Memory.Limit = memory_limit
    return oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(Terminal=terminal, Args=args, Env=list(env), Cwd=cwd),
        Root=oci_pb2.Root(Path=root),
        Hostname=hostname,
        Mounts=[
            oci_pb2.Mount(destination="/proc", source="proc", type="proc"),
            oci_pb2.Mount(
                destination="/dev",
                source="tmpfs",
                type="tmpfs",
                options=["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            oci_pb2.Mount(
                destination="/dev/pts",
                source="devpts",
                type="devpts",
                options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            ),
            *mounts,
        ],
        Linux=oci_pb2.Linux(
            Namespaces=[
                oci_pb2.LinuxNamespace(
                    Type=t, Path="/var/run/netns/host-pod" if t == "network" else ""
                )
                for t in NAMESPACES
            ],
            Resources=resources,
            CgroupsPath="/kubepods/host/path/ignored",
            MaskedPaths=["/proc/kcore"],
            ReadonlyPaths=["/proc/sys"],
        ),
    )


class Agent:
    """The agent under test, a subprocess on a Unix socket, and a client to it."""

    def __init__(self, tmp_path: Path, *extra_args: str, runtime: str = "runc") -> None:
        self.runtime = runtime
        self.dir = tmp_path
        self.socket = tmp_path / "agent.sock"
        self.run_dir = tmp_path / "run"
        self.shared_dir = tmp_path / "shared"
        self.runc_root = tmp_path / "runc"
        self.resolv_conf = tmp_path / "resolv.conf"
        self.log_path = tmp_path / "agent.log"
        self.cgroup_parent = f"pykata-agent-test-{uuid.uuid4().hex[:8]}"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.client: ttrpc.Client | None = None
        self.agent: ttrpc.Stub
        self.health: ttrpc.Stub

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rootfs(self, cid: str) -> Path:
        """Where the agent looks for a container's root by default (the shared dir)."""
        return build_rootfs(self.shared_dir / cid / "rootfs")

    async def start(self) -> Agent:
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        hide_unified = []
        if self.runtime == "crun" and unified_has_controllers():
            mount = 'mount -t tmpfs pykata-test "$0" && exec "$@"'
            hide_unified = ["sh", "-c", mount, f"{CGROUP_ROOT}/unified"]
        argv = [
            "unshare", "--mount", "--uts", "--net", "--",
            *hide_unified,
            sys.executable, "-m", "agent",
            "--listen", f"unix://{self.socket}",
            "--run-dir", str(self.run_dir),
            "--shared-dir", str(self.shared_dir),
            "--runc-root", str(self.runc_root),
            "--cgroup-parent", self.cgroup_parent,
            "--resolv-conf", str(self.resolv_conf),
            "--no-poweroff",
            "--log-level", "debug",
            *self.extra_args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYKATA_OCI_RUNTIME=self.runtime)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=ROOT)
        deadline = time.monotonic() + 15
        while self.client is None:
            try:
                self.client = await ttrpc.Client.connect(str(self.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"agent did not start:\n{self.log()}") from None
                await asyncio.sleep(0.02)
        self.agent = ttrpc.Stub(self.client, AGENT_SERVICE)
        self.health = ttrpc.Stub(self.client, HEALTH_SERVICE)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM the agent (it removes its containers), then sweep what might be left."""
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            for _ in range(300):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                self.process.kill()
                self.process.wait()
        self.sweep()

    def runtime_argv(self, *args: str) -> list[str]:
        """The agent's runtime on its state root."""
        return [self.runtime, "--root", str(self.runc_root), *args]

    def runc_list(self) -> list[str]:
        if not self.runc_root.exists():
            return []
        out = subprocess.run(
            self.runtime_argv("list", "--format", "json"),
            capture_output=True,
            text=True,
        ).stdout
        return [c["id"] for c in json.loads(out or "null") or []]

    def sweep(self) -> None:
        """Delete containers and cgroups the agent left (none, if it did its job)."""
        for cid in self.runc_list():
            subprocess.run(self.runtime_argv("delete", "--force", cid), capture_output=True)
        for hierarchy in [CGROUP_ROOT, *(str(p) for p in Path(CGROUP_ROOT).iterdir())]:
            folder = Path(hierarchy) / self.cgroup_parent
            if folder.is_dir():
                for child in folder.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def leftover_cgroups(self) -> list[str]:
        return [str(p) for p in Path(CGROUP_ROOT).glob(f"*/{self.cgroup_parent}")]

    def in_netns(self, *argv: str) -> str:
        """Run a command in the agent's network namespace (never the host's)."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", *argv], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.stderr}")
        return done.stdout

    # -- conveniences ------------------------------------------------------------------
    async def create(
        self, cid: str, args: list[str], *, start: bool = True, **spec_args: object
    ) -> None:
        self.rootfs(cid)
        await self.agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=cid,
                exec_id=cid,
                OCI=spec(args, **spec_args),  # type: ignore[arg-type]
            )
        )
        if start:
            await self.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid))

    async def read_all(self, cid: str, exec_id: str = "", *, stderr: bool = False) -> bytes:
        """Read a stream to its end (the agent says OUT_OF_RANGE at EOF)."""
        read = self.agent.ReadStderr if stderr else self.agent.ReadStdout
        data = b""
        while True:
            try:
                answer = await read(
                    agent_pb2.ReadStreamRequest(container_id=cid, exec_id=exec_id, len=65536),
                    timeout=30,
                )
            except ttrpc.TTRPCError as exc:
                assert exc.code == ttrpc.Code.OUT_OF_RANGE, exc
                return data
            assert answer.data
            data += answer.data

    async def wait(self, cid: str, exec_id: str = "", timeout: float = 30) -> int:
        answer = await self.agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id), timeout=timeout
        )
        return answer.status

    async def exec(
        self, cid: str, exec_id: str, args: list[str], *, terminal: bool = False
    ) -> None:
        await self.agent.ExecProcess(
            agent_pb2.ExecProcessRequest(
                container_id=cid,
                exec_id=exec_id,
                process=oci_pb2.Process(Args=args, Env=["PATH=/bin"], Cwd="/", Terminal=terminal),
            )
        )


@contextlib.asynccontextmanager
async def running_agent(tmp_path: Path, runtime: str) -> AsyncIterator[Agent]:
    """An agent on this host for one test; at the end it has removed all it made."""
    running = await Agent(tmp_path, runtime=runtime).start()
    try:
        yield running
    finally:
        await running.stop()
        print(running.log())  # shown when the test failed
    assert running.runc_list() == []
    assert running.leftover_cgroups() == []
    assert not any(running.run_dir.iterdir()) if running.run_dir.exists() else True
