"""Launch a VM, booted or restored from a clone it is handed, and hand back a RunningVM
whose agent answers; tear everything down on any failure.

Whether there is a template to restore from is not decided here but by the caller
(shim.vmm.factory): this module imports nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

import ttrpc
from pykata_common.contract import AGENT_VSOCK_PORT, VSOCK_LISTENING_NOTICE
from shim.agent_client import AgentAddress, AgentClient
from shim.guest_agent import GuestAgent
from shim.vmm import channel as channels
from shim.vmm import hotplug, procs, qemu_args, restore, vhost_vsock
from shim.vmm.accel import AccelChoice, choose_accel
from shim.vmm.child import ChildProcess
from shim.vmm.clone import Clone
from shim.vmm.confinement import QEMU_KEY, ConfinementError, refuse
from shim.vmm.errors import (
    AgentTimeoutError,
    QemuExitedError,
    VhostVsockError,
    VMError,
    VMStartError,
)
from shim.vmm.hostcaps import (
    DEFAULT_CACHE_DIR,
    HostCapsCache,
    probe_seccomp,
    probe_virtiofsd,
    virtiofsd_serving_pid,
)
from shim.vmm.layout import VMPaths
from shim.vmm.qemu import launch, tail
from shim.vmm.qmp import QMP, port_open_event
from shim.vmm.virtiofsd import exit_reason, option_value, start_virtiofsd
from shim.vmm.vm_config import QBOOT, VMConfig
from shim.vmm.vm_record import StateWriter, kill_from_state, load_record
from shim.vmm.vsock import open_vhost_vsock

log = structlog.get_logger(__name__)
T = TypeVar("T")

QMP_CONNECT_TIMEOUT = 10.0
VIRTIOFSD_EXIT_GRACE = 2.0  # virtiofsd leaves by itself once QEMU hangs up
CANCEL_GRACE = 2.0  # s a cancelled start step may take to end
CONSOLE_POLL = 0.02  # s between looks at the console for the agent's listening notice
LISTENING_WAIT = 20.0  # s after which hybrid vsock is dialled without the notice
LISTENING_SCAN = 16 << 20  # console bytes read looking for it, at most

# (accelerator, firmware, agent channel) -> the clone to restore, or None to boot. Asked
# once those are probed (they are the template's key), so that the clone's RAM copy
# runs while virtiofsd and QEMU start.
CloneSource = Callable[[AccelChoice, "str | None", str], Awaitable["Clone | None"]]


class RunningVM:
    """A VM whose agent has answered. `pid` is QEMU's (reported for every process)."""

    def __init__(
        self,
        *,
        paths: VMPaths,
        config: VMConfig,
        qemu: ChildProcess,
        virtiofsd: ChildProcess | None,
        qmp: QMP,
        agent: GuestAgent,
        accel: AccelChoice,
        timings: dict[str, float],
        restored: bool = False,
        vhost_vsock: ChildProcess | None = None,
        channel: str = channels.SERIAL,
    ) -> None:
        self.paths = paths
        self.config = config
        self.qemu = qemu
        self.virtiofsd = virtiofsd
        self.vhost_vsock = vhost_vsock  # hybrid vsock's daemon
        self.channel = channel  # the agent's: shim.vmm.channel.VSOCK, HVSOCK or SERIAL
        self.qmp = qmp
        self.agent = agent
        self.accel = accel
        self.timings = timings
        self.restored = restored  # a clone of a template, not booted
        self.vcpus = config.vcpus  # now, with what was hot-plugged
        self.memory_mib = config.memory_mib
        self._dimms = 0
        self._stopping: asyncio.Task[None] | None = None
        qemu.exited.add_done_callback(self._on_qemu_exit)

    @property
    def pid(self) -> int:
        return self.qemu.pid

    @property
    def state_dir(self) -> Path:
        return self.paths.state_dir

    @property
    def console_log(self) -> Path:
        return self.paths.console_log

    @property
    def running(self) -> bool:
        return not self.qemu.exited.done()

    def _on_qemu_exit(self, fut: asyncio.Future[int]) -> None:
        if self._stopping is None and not fut.cancelled():
            # status 0: the guest powered off (e.g. after DestroySandbox); else a crash
            emit = log.info if fut.result() == 0 else log.warning
            emit(
                "qemu exited",
                pid=self.pid,
                status=fut.result(),
                stderr=tail(self.paths.qemu_stderr, max_lines=5),
            )

    async def grow(self, vcpus: int, memory_mib: int) -> tuple[int, int]:
        """Hot-plug vCPUs and memory up to (vcpus, memory_mib), within maxcpus/maxmem;
        (vCPUs, MiB) added. ResizeError, naming the limit, when it would pass one."""
        from shim.vmm import resize

        max_vcpus = max(self.config.max_vcpus, self.config.vcpus)
        max_memory = max(self.config.max_memory_mib, self.config.memory_mib)
        if vcpus > max_vcpus:
            raise resize.ResizeError(f"{vcpus} vCPUs asked, at most {max_vcpus}")
        added_memory = 0
        if memory_mib > self.memory_mib:
            added_memory = resize.dimm_mib(memory_mib - self.memory_mib)
            if self.memory_mib + added_memory > max_memory:
                raise resize.ResizeError(
                    f"{memory_mib} MiB of memory asked, at most {max_memory} MiB"
                )
        added_cpus = 0
        if vcpus > self.vcpus:
            added_cpus = await resize.add_cpus(self.qmp, vcpus - self.vcpus)
            self.vcpus += added_cpus
        if added_memory:
            await resize.add_memory(self.qmp, self._dimms, added_memory)
            self._dimms += 1
            self.memory_mib += added_memory
        log.info("vm grown", pid=self.pid, vcpus=self.vcpus, memory_mib=self.memory_mib)
        return added_cpus, added_memory

    async def wait_death(self) -> str | None:
        """Wait until QEMU, virtiofsd or vhost-device-vsock ends by itself; why, or None
        when stop() ended it.

        A guest kernel panic is a QEMU exit too: the guest runs with `panic=-1`
        and QEMU with `-no-reboot`, so the panic's reboot ends QEMU.
        """
        watched = {self.qemu.exited}
        if self.virtiofsd is not None:
            watched.add(self.virtiofsd.exited)
        if self.vhost_vsock is not None:
            watched.add(self.vhost_vsock.exited)
        await asyncio.wait(
            {asyncio.shield(f) for f in watched}, return_when=asyncio.FIRST_COMPLETED
        )
        if self._stopping is not None:
            return None
        if (
            not self.qemu.exited.done()
            and self.virtiofsd is not None
            and (self.virtiofsd.returncode == 0)
        ):
            # virtiofsd leaves by itself (status 0) once QEMU hangs up: did QEMU go first?
            await self.qemu.wait(VIRTIOFSD_EXIT_GRACE)
        if self.qemu.exited.done():
            status = self.qemu.returncode
            panic = [
                line
                for line in tail(self.paths.console_log, max_lines=60).splitlines()
                if "Kernel panic" in line
            ]
            if panic:
                return f"the guest kernel panicked ({panic[-1].strip()})"
            if status == 0:
                return "QEMU exited by itself (status 0): the guest rebooted or powered off"
            return f"QEMU (pid {self.pid}) exited with status {status}"
        if self.vhost_vsock is not None and self.vhost_vsock.exited.done():
            return (
                f"vhost-device-vsock (pid {self.vhost_vsock.pid}) exited with status "
                f"{self.vhost_vsock.returncode}: the guest lost its agent channel"
            )
        assert self.virtiofsd is not None
        return (
            f"virtiofsd (pid {self.virtiofsd.pid}) exited with "
            f"{exit_reason(self.virtiofsd.returncode)}: the guest lost its shared filesystem"
        )

    async def wait_exited(self) -> int:
        """Wait for QEMU to exit; its exit status (negative: the signal that killed it)."""
        return await asyncio.shield(self.qemu.exited)

    async def stop(self, timeout: float | None = None) -> None:
        """QMP quit, wait, SIGKILL after `timeout` (config.stop_timeout); then virtiofsd,
        vhost-device-vsock, sockets and records. Idempotent; safe if the guest powered
        itself off."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._stop(self.config.stop_timeout if timeout is None else timeout)
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, timeout: float) -> None:
        t0 = time.monotonic()
        await self.agent.close()
        if not self.qemu.exited.done():
            await self.qmp.quit(timeout=min(timeout, 5.0))
            if await self.qemu.wait(timeout) is None:
                log.warning("qemu did not quit, killing it", pid=self.pid, timeout=timeout)
                await self.qemu.terminate(1.0)
        await _teardown(self.paths, self.qemu, self.virtiofsd, self.qmp, None, self.vhost_vsock)
        log.info(
            "vm stopped",
            pid=self.pid,
            status=self.qemu.returncode,
            seconds=round(time.monotonic() - t0, 3),
        )


async def _teardown(
    paths: VMPaths,
    qemu: ChildProcess | None,
    virtiofsd: ChildProcess | None,
    qmp: QMP | None,
    agent: AgentClient | None,
    vhost_vsock: ChildProcess | None = None,
) -> None:
    """Stop whatever of a VM exists, quickly, then remove its sockets and records.

    vhost-device-vsock goes after QEMU: it waits for the next QEMU, never leaving itself."""
    if agent is not None:
        with contextlib.suppress(Exception):
            await agent.close()
    if qemu is not None:
        await qemu.terminate(1.0)
        qemu.close()
    if qmp is not None:
        await qmp.close()
    if virtiofsd is not None:
        if await virtiofsd.wait(VIRTIOFSD_EXIT_GRACE) is None:
            await virtiofsd.terminate(1.0)
        virtiofsd.close()
    if vhost_vsock is not None:
        await vhost_vsock.terminate(1.0)
        vhost_vsock.close()
    for line in await asyncio.to_thread(kill_from_state, paths.state_dir):
        log.debug("cleanup", action=line, state_dir=str(paths.state_dir))


def resolve_firmware(firmware: str) -> str | None:
    """-bios path for a config value: "auto" = qboot if installed, "" = QEMU's default.

    qboot boots Linux ~0.2 s faster than SeaBIOS under TCG."""
    if firmware == "auto":
        return QBOOT if os.path.exists(QBOOT) else None
    return firmware or None


def _check_inputs(config: VMConfig, paths: VMPaths) -> None:
    """Fail before starting anything when a path is plainly wrong."""
    if too_long := paths.too_long():
        raise VMStartError(f"socket path too long for AF_UNIX (max 107 bytes): {too_long[0]}")
    firmware = None if config.firmware == "auto" else config.firmware
    for what, path in (
        ("QEMU", config.qemu_path),
        ("guest kernel", config.kernel),
        ("guest initrd", config.initrd),
        ("guest image", config.image),
        ("firmware", firmware),
    ):
        if path and not os.path.exists(path):
            raise VMStartError(f"{what} not found: {path}")
    record = load_record(paths.state_dir)
    if record is not None:
        alive = [
            f"{n} pid {r.pid}"
            for n, r in record.processes.items()
            if procs.is_running(r.pid, r.start_time)
        ]
        if alive:
            raise VMStartError(f"{paths.state_dir} already has a running VM ({', '.join(alive)})")


class _Start:
    """One start attempt: what has been started so far, and the deadline."""

    def __init__(self, config: VMConfig, paths: VMPaths, timeout: float) -> None:
        self.config = config
        self.paths = paths
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.deadline = self.t0 + timeout
        self.timings: dict[str, float] = {}
        self.qemu: ChildProcess | None = None
        self.virtiofsd: ChildProcess | None = None
        self.vhost_vsock: ChildProcess | None = None
        self.qmp: QMP | None = None
        self.agent: AgentClient | None = None
        self.vhostfd: int | None = None
        self.port_opened = False
        self.channel = channels.SERIAL

    def mark(self, name: str) -> None:
        self.timings[name] = round(self.loop.time() - self.t0, 4)

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.loop.time())

    def exited_error(self, what: str) -> QemuExitedError:
        assert self.qemu is not None
        status = self.qemu.returncode
        return QemuExitedError(
            f"QEMU (pid {self.qemu.pid}) exited with status {status} while {what}",
            exit_code=status,
            stderr_tail=tail(self.paths.qemu_stderr),
            console_tail=tail(self.paths.console_log, max_lines=20),
        )

    def timeout_error(self, what: str) -> AgentTimeoutError:
        if self.channel != channels.SERIAL:
            port = f"agent channel {channels.LABELS[self.channel]}"
        elif self.port_opened:
            port = "the agent port was opened by the guest"
        else:
            port = "the guest never opened the agent port"
        console = tail(self.paths.console_log, max_lines=30)
        if not console:
            port += "; the guest console is empty (boot with debug for kernel and init logs)"
        return AgentTimeoutError(
            f"the guest agent did not answer within {self.timeout:g}s ({what}; {port})",
            stderr_tail=tail(self.paths.qemu_stderr, max_lines=10),
            console_tail=console,
        )

    def qmp_error(self, what: str) -> VMStartError:
        return VMStartError(
            f"QEMU's QMP did not answer within {self.timeout:g}s ({what})",
            stderr_tail=tail(self.paths.qemu_stderr),
        )

    async def guard(self, aw: Awaitable[T], what: str, *, agent: bool = True) -> T:
        """Await `aw` unless QEMU exits or the deadline passes first.

        `agent=False`: a timeout is QEMU's fault (QMP), not the agent's."""
        assert self.qemu is not None
        task = asyncio.ensure_future(aw)
        watched = {task, self.qemu.exited}
        if self.vhost_vsock is not None:
            watched.add(self.vhost_vsock.exited)
        try:
            done, _ = await asyncio.wait(
                watched, timeout=self.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not task.done():
                task.cancel()
                # bounded: Python 3.11's wait_for can swallow a cancel that races the
                # inner call's completion, and the start must not hang on that
                await asyncio.wait({task}, timeout=CANCEL_GRACE)
                if not task.done():
                    log.warning("a start step ignored its cancellation", step=what,
                                state_dir=str(self.paths.state_dir))
                elif not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warning
        if task in done:
            return task.result()
        if self.qemu.exited.done():
            raise self.exited_error(what)
        if self.vhost_vsock is not None and self.vhost_vsock.exited.done():
            raise VhostVsockError(
                f"vhost-device-vsock (pid {self.vhost_vsock.pid}) exited with status "
                f"{self.vhost_vsock.returncode} while {what}:\n"
                f"{tail(self.paths.vhost_vsock_log)}",
                exit_code=self.vhost_vsock.returncode,
            )
        raise self.timeout_error(what) if agent else self.qmp_error(what)

    async def abort(self) -> None:
        await _teardown(
            self.paths, self.qemu, self.virtiofsd, self.qmp, self.agent, self.vhost_vsock
        )
        if self.vhostfd is not None:
            os.close(self.vhostfd)
            self.vhostfd = None


def channel_kind(config: VMConfig, *, templated: bool | None = None) -> str:
    """"vsock", "hvsock" or "serial": the agent channel this config gets on this host
    (shim.vmm.channel; `templated`: the VM is a template or a clone of one, by default
    when the config names a template)."""
    return channels.for_config(config, templated=templated).kind


def _channel(kind: str, config: VMConfig, paths: VMPaths, st: _Start) -> qemu_args.AgentChannel:
    if kind == channels.SERIAL:
        return qemu_args.SerialChannel(paths.agent_socket)
    if kind == channels.HVSOCK:
        return qemu_args.HybridVsockChannel(paths.vhost_vsock_socket, paths.hvsock_socket)
    try:
        st.vhostfd, cid = open_vhost_vsock(config.vsock_cid)
    except OSError as e:
        raise VMStartError(f"cannot get a vsock CID from /dev/vhost-vsock: {e}") from e
    return qemu_args.VsockChannel(cid, st.vhostfd)


async def _wait_port(st: _Start, listener: Any) -> None:
    """Wait for VSERPORT_CHANGE open=true of the agent port."""
    while True:
        event = await listener.get()
        if event.get("data", {}).get("open"):
            return
        log.debug("agent port closed by the guest", state_dir=str(st.paths.state_dir))


async def _wait_agent(st: _Start, agent: AgentClient) -> Any:
    """Health/Check until it answers; retried on the same virtio-serial connection (stale
    answers to earlier tries are ignored by stream id), on a new vsock one, and
    reconnected if the connection drops."""
    per_try = 1.0
    me = asyncio.current_task()
    while True:
        if me is not None and me.cancelling():  # a cancel a wait_for swallowed
            raise asyncio.CancelledError()
        try:
            return await agent.check(timeout=max(0.05, min(per_try, st.remaining())))
        except ttrpc.TTRPCError as e:
            if st.channel == channels.HVSOCK:
                _raise_if_vhost_vsock_worker_died(st)
            if e.code == ttrpc.Code.DEADLINE_EXCEEDED:
                per_try = min(per_try * 2, 5.0)
                if st.channel != channels.SERIAL:
                    # a vsock stream the guest took but does not serve (e.g. one a
                    # listener accepted just before it closed): dial a new one
                    log.info("the agent did not answer on its vsock stream: dialing again",
                             channel=st.channel, state_dir=str(st.paths.state_dir))
                    await agent.reset()
                continue
            if e.code != ttrpc.Code.UNAVAILABLE:
                raise
            await agent.reset()
            await asyncio.sleep(0.05)


def _raise_if_vhost_vsock_worker_died(st: _Start) -> None:
    """VhostVsockError, at once, when vhost-device-vsock's worker thread panicked: the
    process lives on, but no CONNECT to this VM would ever be answered again."""
    log_tail = tail(st.paths.vhost_vsock_log)
    if "panicked" in log_tail:
        raise VhostVsockError(
            "vhost-device-vsock's worker thread died, so the agent cannot be reached over "
            f"hybrid vsock (set agent_transport = \"serial\" to avoid it):\n{log_tail}")


async def _virtiofsd_confinement(config: VMConfig, cache: HostCapsCache) -> list[str]:
    """--sandbox/--seccomp for virtiofsd: the strongest this host runs (probed once per
    boot and binary), unless virtiofsd_extra_args sets them (the user's choice wins).
    Raises ConfinementError when what it would run with is below the floor."""
    if not os.path.exists(config.virtiofsd_path):
        return []  # start_virtiofsd says so
    extra = config.virtiofsd_extra_args
    sandbox, seccomp = option_value(extra, "--sandbox"), option_value(extra, "--seccomp")
    configured = tuple(o for o in ("--sandbox", "--seccomp") if option_value(extra, o))
    choice = None
    if not (sandbox and seccomp):
        choice = await asyncio.to_thread(probe_virtiofsd, config.virtiofsd_path, cache)
        sandbox, seccomp = sandbox or choice.sandbox, seccomp or choice.seccomp
    refuse(
        *config.confinement.virtiofsd_shortfalls(
            sandbox, seccomp, detail=choice.detail if choice else "", configured=configured
        )
    )
    emit = log.info if (sandbox, seccomp) == ("namespace", "kill") else log.warning
    emit(
        "virtiofsd confinement",
        sandbox=sandbox,
        seccomp=seccomp,
        from_config=list(configured),
        floor=f"{config.confinement.virtiofsd_sandbox}/{config.confinement.virtiofsd_seccomp}",
        probe=choice.detail if choice else None,
    )
    return choice.args() if choice else []


async def _qemu_sandbox(config: VMConfig, cache: HostCapsCache) -> bool:
    """Whether QEMU runs with -sandbox; ConfinementError when the floor needs it and this
    QEMU has no seccomp support."""
    if not config.seccomp_sandbox:
        refuse(config.confinement.qemu_shortfall(False, "switched off"))
        return False
    on, detail = await asyncio.to_thread(probe_seccomp, config.qemu_path, cache)
    if not on:
        refuse(config.confinement.qemu_shortfall(False, detail))
        log.warning(
            f"QEMU has no seccomp support: running without -sandbox, as {QEMU_KEY} allows",
            qemu=config.qemu_path,
            detail=detail,
        )
    return on


def _check_confinement(st: _Start, seccomp: bool, virtiofsd_args: list[str]) -> dict[str, str]:
    """The seccomp state QEMU and virtiofsd really run with, for the start log.

    A process started with a filter that /proc shows without one is a ConfinementError
    when the floor needs that filter (a warning when the floor was lowered)."""
    assert st.qemu is not None
    floor = st.config.confinement
    checks = [("qemu", st.qemu.pid, seccomp, floor.qemu_sandbox)]
    if st.virtiofsd is not None:
        mode = option_value([*virtiofsd_args, *st.config.virtiofsd_extra_args], "--seccomp")
        needed = floor.virtiofsd_seccomp != "none"
        checks.append(
            ("virtiofsd", virtiofsd_serving_pid(st.virtiofsd.pid), mode != "none", needed)
        )
    out = {}
    for name, pid, want, needed in checks:
        seen = procs.read_confinement(pid)
        out[f"{name}_seccomp"] = seen.seccomp_name if seen else "gone"
        if want and seen is not None and not seen.filtered:
            if needed:
                refuse(f"{name} (pid {pid}) runs without its seccomp filter ({seen})")
            log.warning("running without a seccomp filter", process=name, pid=pid, status=str(seen))
    return out


class RestoreFailed(Exception):
    """A clone did not come up; its cause is the VMError. The caller may boot instead."""


async def launch_vm(
    config: VMConfig,
    state_dir: Path,
    shared_dir: Path | None,
    *,
    timeout: float | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    as_template: bool = False,
    clone_source: CloneSource | None = None,
) -> RunningVM:
    """Start a VM for a sandbox and return it once its agent answers Health/Check.

    Restored from the clone `clone_source` hands over, if any (it gets the shared
    filesystem and NICs hot-plugged, and its own clock and RNG seed), else booted. A
    clone that does not come up raises RestoreFailed (never for a ConfinementError: a
    boot would be refused as well). `as_template`: boot the VM a template is made from
    (RAM in state_dir/memory, no shared filesystem, no NICs). Raises VMStartError
    (QemuExitedError, AgentTimeoutError, VirtiofsdError) after tearing down everything
    it started.
    """
    state_dir = Path(state_dir)
    from shim.paths import private_dir

    private_dir(state_dir)
    paths = VMPaths(state_dir)
    _check_inputs(config, paths)
    kill_from_state(state_dir)  # stale sockets of an earlier, dead VM
    st = _Start(config, paths, config.agent_timeout if timeout is None else timeout)
    cache = HostCapsCache(cache_dir)
    clone: Clone | None = None
    virtiofs = config.shared_fs == "virtio-fs" and not as_template
    choice = channels.for_config(
        config, templated=as_template or config.template_path is not None
    )
    st.channel = choice.kind
    if channels.NO_MIGRATION in choice.reason:
        log.info("agent channel: virtio-serial, not hybrid vsock", reason=choice.reason)
    try:
        accel = await choose_accel(
            config.accel, config.qemu_path, config.kernel, config.cpu_model, cache=cache
        )
        seccomp = await _qemu_sandbox(config, cache)
        virtiofsd_args = []
        if virtiofs:
            virtiofsd_args = await _virtiofsd_confinement(config, cache)
        st.mark("probed")
        firmware = resolve_firmware(config.firmware)
        if clone_source is not None and not as_template:
            clone = await clone_source(accel, firmware, choice.kind)
        writer = StateWriter(paths)
        if virtiofs:
            assert shared_dir is not None
            st.virtiofsd = await start_virtiofsd(
                config.virtiofsd_path,
                paths.virtiofsd_socket,
                Path(shared_dir),
                cache=config.virtiofs_cache,
                extra=config.virtiofsd_extra_args,
                confinement=virtiofsd_args,
                log_path=paths.virtiofsd_log,
                timeout=min(10.0, st.remaining()),
            )
            writer.add_process("virtiofsd", st.virtiofsd.pid, config.virtiofsd_path)
            st.mark("virtiofsd_ready")
        if choice.kind == channels.HVSOCK:
            st.vhost_vsock = await vhost_vsock.start(
                config.vhost_vsock_daemon,
                paths.vhost_vsock_socket,
                paths.hvsock_socket,
                log_path=paths.vhost_vsock_log,
                timeout=min(10.0, st.remaining()),
            )
            writer.add_process("vhost-vsock", st.vhost_vsock.pid, config.vhost_vsock_daemon)
            st.mark("vhost_vsock_ready")
        channel = _channel(choice.kind, config, paths, st)
        layout = None
        if as_template:
            layout = qemu_args.TemplateLayout(paths.state_dir / "memory")
        elif clone is not None:
            memory = Path(f"/proc/self/fd/{clone.memory_fd}")  # QEMU inherits the memfd
            layout = qemu_args.TemplateLayout(memory, incoming=True)
        argv = qemu_args.build_argv(
            config,
            paths,
            accel=accel.accel,
            cpu=accel.cpu,
            channel=channel,
            seccomp=seccomp,
            firmware=firmware,
            layout=layout,
            image_bytes=os.path.getsize(config.image) if config.image else 0,
        )
        fds = qemu_args.passed_fds(config, channel, nics=layout is None)
        st.qemu = launch(
            argv,
            stderr_path=paths.qemu_stderr,
            netns=config.netns,
            pass_fds=fds + ([clone.memory_fd] if clone is not None else []),
        )
        writer.add_process("qemu", st.qemu.pid, config.qemu_path)
        st.mark("qemu_launched")
        if st.vhostfd is not None:  # QEMU has its copy
            os.close(st.vhostfd)
            st.vhostfd = None
        if isinstance(channel, qemu_args.VsockChannel):
            address = AgentAddress(vsock_cid=channel.cid, vsock_port=AGENT_VSOCK_PORT)
        elif isinstance(channel, qemu_args.HybridVsockChannel):
            address = AgentAddress(hvsock_path=str(channel.uds), vsock_port=AGENT_VSOCK_PORT)
        else:
            address = AgentAddress(unix_path=str(channel.socket))
        writer.set_agent(address=str(address))
        qemu = st.qemu
        st.qmp = QMP(paths.qmp_socket)
        await st.guard(
            st.qmp.connect(
                timeout=min(QMP_CONNECT_TIMEOUT, st.remaining()),
                alive=lambda: not qemu.exited.done(),
            ),
            "waiting for QMP",
            agent=False,
        )
        if clone is not None:
            await _resume_clone(st, clone, virtiofs)
        else:
            await _boot(st, channel)
        st.agent = AgentClient(address, connect_timeout=5.0)
        await st.guard(_wait_agent(st, st.agent), "waiting for the agent's Health/Check")
        st.mark("agent_ready")
        if clone is not None:
            await st.guard(
                restore.give_identity(GuestAgent(st.agent)), "setting the clone's clock and RNG"
            )
            st.mark("identity_given")
        confinement = _check_confinement(st, seccomp, virtiofsd_args)
    except BaseException as exc:
        await st.abort()
        if clone is not None and isinstance(exc, Exception) and not isinstance(
            exc, ConfinementError  # a boot would be refused as well
        ):
            error = exc if isinstance(exc, VMError) else VMStartError(str(exc))
            raise RestoreFailed() from error
        if isinstance(exc, VMError) or not isinstance(exc, Exception):
            raise
        if st.qemu is not None and st.qemu.exited.done():
            raise st.exited_error(f"starting ({exc})") from exc
        raise VMStartError(f"VM start failed: {exc}") from exc
    finally:
        if clone is not None:
            await clone.release()
    assert st.qemu is not None and st.qmp is not None and st.agent is not None
    vm = RunningVM(
        paths=paths,
        config=config,
        qemu=st.qemu,
        virtiofsd=st.virtiofsd,
        qmp=st.qmp,
        agent=GuestAgent(st.agent),
        accel=accel,
        timings=st.timings,
        restored=clone is not None,
        vhost_vsock=st.vhost_vsock,
        channel=choice.kind,
    )
    if st.vhost_vsock is not None:
        confinement["vhost_vsock"] = vhost_vsock.CONFINEMENT
    log.info(
        "vm started",
        pid=vm.pid,
        accel=accel.accel,
        agent_channel=choice.kind,
        restored_from=str(clone.tdir.path) if clone is not None else None,
        state_dir=str(state_dir),
        **confinement,
        **st.timings,
    )
    return vm


async def _boot(st: _Start, channel: qemu_args.AgentChannel) -> None:
    """Start the vCPUs of a VM that boots; wait until the guest opens the agent port."""
    assert st.qmp is not None
    listener = None
    if isinstance(channel, qemu_args.SerialChannel):
        listener = st.qmp.listen("VSERPORT_CHANGE", port_open_event(qemu_args.AGENT_PORT_ID))
    await st.guard(st.qmp.execute("cont"), "starting the vCPUs", agent=False)
    st.mark("qmp_ready")
    if listener is not None:
        await st.guard(_wait_port(st, listener), "waiting for the agent port")
        st.qmp.unlisten(listener)
        st.port_opened = True
        st.mark("port_open")
    if isinstance(channel, qemu_args.HybridVsockChannel):
        await st.guard(_wait_listening(st), "waiting for the agent to listen on vsock")
        st.mark("vsock_listening")


async def _wait_listening(
    st: _Start, *, poll: float = CONSOLE_POLL, limit: float = LISTENING_WAIT
) -> bool:
    """Until the guest console says the agent listens on vsock (VSOCK_LISTENING_NOTICE);
    False, and the dialing starts anyway, after `limit` seconds or LISTENING_SCAN bytes.

    vhost-device-vsock 0.3 takes host connections once it has the guest's memory table,
    but its queues are usable only from their kick fds on, which QEMU sends without
    waiting and a busy daemon takes in late: a CONNECT in between ends its one worker
    thread, and then no connection to this VM is ever answered. By the time the agent
    listens the guest has run on that device for a second or more. The console is the
    guest's word, so it only says when to start dialing: a guest that lies early can
    break only its own channel."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    notice = VSOCK_LISTENING_NOTICE.encode()
    offset, carry = 0, b""
    with contextlib.ExitStack() as held:
        console = None  # opened once it exists, then read as it grows (no trim runs yet)
        while loop.time() < deadline and offset < LISTENING_SCAN:
            if console is None:
                with contextlib.suppress(FileNotFoundError):
                    console = held.enter_context(st.paths.console_log.open("rb"))
            chunk = console.read(min(64 << 10, LISTENING_SCAN - offset)) if console else b""
            if chunk:
                if notice in carry + chunk:
                    return True
                carry = (carry + chunk)[-len(notice):]
                offset += len(chunk)
                continue
            await asyncio.sleep(poll)
    log.info("the console never said the agent listens on vsock; dialing anyway",
             waited=round(limit, 1), read_bytes=offset, state_dir=str(st.paths.state_dir))
    return False


async def _resume_clone(st: _Start, clone: Clone, virtiofs: bool) -> None:
    """Load the template's device state, hot-plug the pod's devices, start the vCPUs.

    The agent port stays open across the snapshot, so there is no open event."""
    assert st.qmp is not None
    st.mark("qmp_ready")
    # device state loading reads the virtqueues in guest RAM: the copy must be complete
    st.timings["ram_copied_bytes"] = await st.guard(
        clone.copied_ram(), "copying the template's RAM", agent=False
    )
    st.mark("ram_copied")
    await st.guard(restore.load(st.qmp, clone.state_fd), "loading the template", agent=False)
    os.close(clone.state_fd)
    clone.state_fd = -1
    st.mark("state_loaded")
    steps = hotplug.clone_steps(st.paths.virtiofsd_socket if virtiofs else None, st.config.nics)
    await st.guard(restore.hotplug(st.qmp, steps), "hot-plugging devices", agent=False)
    st.mark("hotplugged")
    await st.guard(st.qmp.execute("cont"), "starting the vCPUs", agent=False)
    st.port_opened = True
