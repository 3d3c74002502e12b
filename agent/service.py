"""grpc.AgentService: Kata's agent API, one handler per method, errors as gRPC codes.

Methods of the service not defined here answer UNIMPLEMENTED (the ttrpc server
does that for names the implementation lacks). Codes: unknown container or
process NOT_FOUND, a second create ALREADY_EXISTS, an operation the state does
not allow FAILED_PRECONDITION, a bad request INVALID_ARGUMENT.

ReadStdout/ReadStderr wait for data; at end of stream they fail with
OUT_OF_RANGE "eof" (Kata's agent fails with INTERNAL "read meet eof"; a shim
made for Kata treats any error there as the end, ours looks for OUT_OF_RANGE).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from google.protobuf.empty_pb2 import Empty

from agent import __version__
from agent.config import Config
from protos.kata import agent_pb2
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

if TYPE_CHECKING:
    from agent.process import Process
    from agent.sandbox import Sandbox

log = logging.getLogger("agent.service")

READ_DEFAULT = 64 * 1024
READ_MAX = 1 << 20
POWER_OFF_DELAY = 0.2  # s between answering DestroySandbox and powering off


class AgentService:
    """The handlers; the state lives in the Sandbox."""

    def __init__(self, sandbox: Sandbox, config: Config) -> None:
        self.sandbox = sandbox
        self.config = config
        self._seccomp: bool | None = None
        self._metrics: Any = None  # agent.metrics.Metrics, made on the first scrape

    def _process(self, cid: str, exec_id: str) -> Process:
        return self.sandbox.get(cid).process(exec_id)

    # -- sandbox ---------------------------------------------------------------------
    async def CreateSandbox(self, request: Any, context: Any) -> Empty:
        if request.kernel_modules or request.guest_hook_path:
            log.warning("CreateSandbox: kernel_modules and guest_hook_path are not supported")
        self.sandbox.create(request)
        log.info("sandbox %s created (hostname %r)", request.sandbox_id, request.hostname)
        return Empty()

    async def DestroySandbox(self, request: Any, context: Any) -> Empty:
        await self.sandbox.destroy(vm_ends=self.config.poweroff)
        log.info("sandbox destroyed")
        if self.config.poweroff:
            from agent import libc

            log.info("powering off in %.1fs", POWER_OFF_DELAY)
            asyncio.get_running_loop().call_later(POWER_OFF_DELAY, libc.power_off)
        return Empty()

    async def GetGuestDetails(self, request: Any, context: Any) -> Any:
        from agent.storage import STORAGE_HANDLERS

        answer = agent_pb2.GuestDetailsResponse(
            agent_details=agent_pb2.AgentDetails(
                version=__version__,
                init_daemon=os.getpid() == 1,
                storage_handlers=STORAGE_HANDLERS,
                supports_seccomp=await self._supports_seccomp(),
            )
        )
        if request.mem_block_size:
            try:
                with open("/sys/devices/system/memory/block_size_bytes") as text:
                    answer.mem_block_size_bytes = int(text.read().strip(), 16)
            except (OSError, ValueError):
                pass
        if request.mem_hotplug_probe:
            answer.support_mem_hotplug_probe = os.path.exists("/sys/devices/system/memory/probe")
        return answer

    async def _supports_seccomp(self) -> bool:
        if self._seccomp is None:
            from agent.children import run

            try:
                done = await run(self.sandbox.reaper, [self.sandbox.runc.binary, "--version"])
                # runc prints its libseccomp version, crun "+SECCOMP"
                self._seccomp = b"libseccomp" in done.stdout or b"+SECCOMP" in done.stdout
            except OSError:
                self._seccomp = False
        return self._seccomp

    async def SetGuestDateTime(self, request: Any, context: Any) -> Empty:
        import time

        if request.Sec < 0 or not 0 <= request.Usec < 1_000_000:
            raise TTRPCError(
                Code.INVALID_ARGUMENT, f"bad time: Sec={request.Sec} Usec={request.Usec}"
            )
        try:
            time.clock_settime_ns(
                time.CLOCK_REALTIME, request.Sec * 1_000_000_000 + request.Usec * 1000
            )
        except OSError as exc:
            raise TTRPCError(Code.INTERNAL, f"clock_settime: {exc.strerror}") from None
        return Empty()

    async def CopyFile(self, request: Any, context: Any) -> Empty:
        from agent.copyfile import copy_file

        copy_file(request, self.config.run_dir)
        return Empty()

    async def ReseedRandomDev(self, request: Any, context: Any) -> Empty:
        from agent.entropy import reseed

        how = reseed(request.data)
        import sys

        if "random" in sys.modules:  # a clone of a template shares its Mersenne state too
            sys.modules["random"].seed()
        log.debug("ReseedRandomDev: %d bytes (%s)", len(request.data), how)
        return Empty()

    async def OnlineCPUMem(self, request: Any, context: Any) -> Empty:
        from agent.hotplug import online

        if request.nb_cpus > 4096:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"nb_cpus {request.nb_cpus} is too many")
        try:
            cpus, blocks = await online(request.nb_cpus, wait=request.wait,
                                        cpu_only=request.cpu_only)
        except TimeoutError as exc:
            raise TTRPCError(Code.DEADLINE_EXCEEDED, str(exc)) from None
        if cpus:
            from agent.hotplug import widen_cpusets

            widen_cpusets(os.path.join(self.config.cgroup_root, "cpuset"),
                          self.config.cgroup_parent)
        log.info("OnlineCPUMem: %d CPUs and %d memory blocks online", cpus, blocks)
        return Empty()

    # -- observability ---------------------------------------------------------------
    async def GetMetrics(self, request: Any, context: Any) -> Any:
        if self._metrics is None:
            from agent.metrics import Metrics

            self._metrics = Metrics()
        return agent_pb2.Metrics(metrics=self._metrics.page())

    # -- volumes ---------------------------------------------------------------------
    async def GetVolumeStats(self, request: Any, context: Any) -> Any:
        from agent.volumes import stats

        return stats(request.volume_guest_path)

    async def ResizeVolume(self, request: Any, context: Any) -> Empty:
        from agent.volumes import resize

        await resize(self.sandbox.reaper, request.volume_guest_path, request.size)
        log.info("volume %s resized to %d bytes", request.volume_guest_path, request.size)
        return Empty()

    # -- containers ------------------------------------------------------------------
    async def CreateContainer(self, request: Any, context: Any) -> Empty:
        if request.devices or request.shared_mounts or request.stdout_port:
            log.warning(
                "container %s: devices, shared_mounts and stdio ports are not supported",
                request.container_id,
            )
        await self.sandbox.create_container(request)
        log.info("container %s created", request.container_id)
        return Empty()

    async def StartContainer(self, request: Any, context: Any) -> Empty:
        await self.sandbox.start_container(request.container_id)
        log.info("container %s started", request.container_id)
        return Empty()

    async def RemoveContainer(self, request: Any, context: Any) -> Empty:
        await self.sandbox.remove(request.container_id, request.timeout or None)
        log.info("container %s removed", request.container_id)
        return Empty()

    async def PauseContainer(self, request: Any, context: Any) -> Empty:
        await self.sandbox.get(request.container_id).pause()
        return Empty()

    async def ResumeContainer(self, request: Any, context: Any) -> Empty:
        await self.sandbox.get(request.container_id).resume()
        return Empty()

    async def UpdateContainer(self, request: Any, context: Any) -> Empty:
        from agent import oci

        container = self.sandbox.get(request.container_id)
        await container.update(oci.resources_json(request.resources))
        return Empty()

    async def StatsContainer(self, request: Any, context: Any) -> Any:
        from agent import stats

        data = await self.sandbox.get(request.container_id).stats()
        return agent_pb2.StatsContainerResponse(
            cgroup_stats=stats.cgroup_stats(data), network_stats=stats.network_stats()
        )

    async def GetOOMEvent(self, request: Any, context: Any) -> Any:
        return agent_pb2.OOMEvent(container_id=await self.sandbox.oom.next())

    # -- processes -------------------------------------------------------------------
    async def ExecProcess(self, request: Any, context: Any) -> Empty:
        from agent import oci

        container = self.sandbox.get(request.container_id)
        if not request.exec_id:
            raise TTRPCError(Code.INVALID_ARGUMENT, "ExecProcess without an exec id")
        if not request.HasField("process"):
            raise TTRPCError(Code.INVALID_ARGUMENT, f"exec {request.exec_id}: no process")
        process = oci.process_json(request.process, what=f"exec {request.exec_id}")
        await container.exec(request.exec_id, process)
        return Empty()

    async def SignalProcess(self, request: Any, context: Any) -> Empty:
        if not 0 <= request.signal <= 64:
            raise TTRPCError(Code.INVALID_ARGUMENT, f"bad signal number {request.signal}")
        await self.sandbox.get(request.container_id).signal(request.exec_id, request.signal)
        return Empty()

    async def WaitProcess(self, request: Any, context: Any) -> Any:
        process = self._process(request.container_id, request.exec_id)
        status = await process.wait()
        if process.init:
            self.sandbox.recount_oom(request.container_id)
            # let a GetOOMEvent waiter answer first: the host then hears of the OOM kill
            # before the exit that makes containerd delete the task
            await asyncio.sleep(0)
        return agent_pb2.WaitProcessResponse(status=status)

    # -- stdio -----------------------------------------------------------------------
    async def WriteStdin(self, request: Any, context: Any) -> Any:
        process = self._process(request.container_id, request.exec_id)
        if process.stdin is None or process.stdin.closed:
            raise TTRPCError(Code.FAILED_PRECONDITION, "stdin is closed")
        try:
            written = await process.stdin.write(request.data)
        except OSError as exc:
            raise TTRPCError(Code.FAILED_PRECONDITION, f"stdin: {exc.strerror or exc}") from None
        return agent_pb2.WriteStreamResponse(len=written)

    async def ReadStdout(self, request: Any, context: Any) -> Any:
        return await self._read(request, stdout=True)

    async def ReadStderr(self, request: Any, context: Any) -> Any:
        return await self._read(request, stdout=False)

    async def _read(self, request: Any, *, stdout: bool) -> Any:
        process = self._process(request.container_id, request.exec_id)
        stream = process.stdout if stdout else process.stderr
        data = b""
        if stream is not None:
            data = await stream.read(min(request.len or READ_DEFAULT, READ_MAX))
        if not data:
            raise TTRPCError(Code.OUT_OF_RANGE, "eof")
        return agent_pb2.ReadStreamResponse(data=data)

    async def CloseStdin(self, request: Any, context: Any) -> Empty:
        process = self._process(request.container_id, request.exec_id)
        if process.stdin is not None:
            await process.stdin.close()
        return Empty()

    async def TtyWinResize(self, request: Any, context: Any) -> Empty:
        process = self._process(request.container_id, request.exec_id)
        try:
            resized = process.resize(request.row, request.column)
        except OSError as exc:
            raise TTRPCError(Code.INTERNAL, f"resize: {exc.strerror}") from None
        if not resized:
            raise TTRPCError(Code.FAILED_PRECONDITION, "the process has no terminal")
        return Empty()

    # -- network ---------------------------------------------------------------------
    async def UpdateInterface(self, request: Any, context: Any) -> Any:
        from agent import network

        return _net(network.update_interface, request.interface)

    async def UpdateRoutes(self, request: Any, context: Any) -> Any:
        from agent import network

        routes = _net(network.update_routes, list(request.routes.Routes))
        return agent_pb2.Routes(Routes=routes)

    async def ListInterfaces(self, request: Any, context: Any) -> Any:
        from agent import network

        return agent_pb2.Interfaces(Interfaces=_net(network.list_interfaces))

    async def ListRoutes(self, request: Any, context: Any) -> Any:
        from agent import network

        return agent_pb2.Routes(Routes=_net(network.list_routes))

    async def AddARPNeighbors(self, request: Any, context: Any) -> Empty:
        from agent import network

        _net(network.add_neighbors, list(request.neighbors.ARPNeighbors))
        return Empty()

    async def GetIPTables(self, request: Any, context: Any) -> Any:
        from agent import iptables

        data = await iptables.save(self.sandbox.reaper, request.is_ipv6)
        return agent_pb2.GetIPTablesResponse(data=data)

    async def SetIPTables(self, request: Any, context: Any) -> Any:
        from agent import iptables

        data = await iptables.restore(self.sandbox.reaper, request.is_ipv6, request.data)
        name = iptables.command(request.is_ipv6, "restore")
        log.info("%s: %d bytes of rules loaded", name, len(request.data))
        return agent_pb2.SetIPTablesResponse(data=data)


def _net(call: Any, *args: Any) -> Any:
    """Run a network call; unknown links NOT_FOUND, bad requests INVALID_ARGUMENT,
    kernel refusals INTERNAL."""
    from agent.network import NetworkError, NoSuchLink

    try:
        return call(*args)
    except NoSuchLink as exc:
        raise TTRPCError(Code.NOT_FOUND, str(exc)) from None
    except NetworkError as exc:
        raise TTRPCError(Code.INVALID_ARGUMENT, str(exc)) from None
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"netlink: {exc.strerror or exc}") from None
