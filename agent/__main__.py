"""`python3 -m agent`: the guest agent's entry point.

Start-up imports only what serving the first Check needs; everything that some
methods need (json, ctypes, netlink, runc handling) loads on first use.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.children import Reaper
    from agent.config import Config

_STARTED = time.monotonic()


def since_process_start() -> float:
    """Seconds since this process started (per /proc/self/stat), for start-up timings."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _STARTED


def _stdio_open() -> None:
    """fds 0-2 must be taken, or pipes for containers could land on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


async def serve(config: Config) -> int:
    """Run the agent until SIGTERM/SIGINT (or forever, as PID 1)."""
    import asyncio
    import logging
    import signal

    from agent import channel
    from agent.children import Reaper
    from agent.forward import Forwards
    from agent.forward_service import PortForwardService
    from agent.health import HealthService
    from agent.sandbox import Sandbox
    from agent.service import AgentService
    from protos.kata import agent_pb2, health_pb2
    from protos.pykata import forward_pb2
    from ttrpc.server import Server

    log = logging.getLogger("agent")
    log.debug("start-up: modules loaded at %.3fs", since_process_start())
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install()
    if os.getpid() != 1:
        from agent import libc

        try:
            libc.set_child_subreaper()
        except OSError as exc:
            log.warning("not a child subreaper (%s): container exit codes may be lost", exc)

    sandbox = Sandbox(config, reaper)
    server = Server()
    server.register(health_pb2.DESCRIPTOR.services_by_name["Health"], HealthService())
    server.register(
        agent_pb2.DESCRIPTOR.services_by_name["AgentService"], AgentService(sandbox, config)
    )
    forwards = Forwards()
    server.register(
        forward_pb2.DESCRIPTOR.services_by_name["PortForward"], PortForwardService(forwards)
    )

    if config.prewarm:
        await sandbox.prewarm()
        log.debug("start-up: prewarmed at %.3fs", since_process_start())
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pause = channel.TEMPLATE_RETRY if config.prewarm else channel.RETRY
    serving = asyncio.create_task(channel.serve(server, config.listen, pause=pause))
    stopping = asyncio.create_task(stop.wait())
    console = None
    if config.debug_console:  # off by default: then nothing of it is even imported
        console = asyncio.create_task(_debug_console(config.debug_console, reaper))
    loop.call_soon(lambda: log.debug("start-up: serving at %.3fs", since_process_start()))
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if serving.done() and serving.exception() is not None:
        error = serving.exception()
        log.error("agent channel failed: %s", error)
        status = 1
    log.info("stopping: removing %d containers", len(sandbox.containers))
    serving.cancel()
    stopping.cancel()
    if console is not None:
        console.cancel()
    forwards.close_all()
    await sandbox.destroy()
    await server.shutdown(grace=1.0)
    reaper.uninstall()
    return status


async def _debug_console(port: str, reaper: Reaper) -> None:
    """The debug console until cancelled; its failure is logged, never the agent's."""
    import logging

    from agent import debug_console

    try:
        await debug_console.serve(port, reaper)
    except Exception as exc:
        logging.getLogger("agent").error("debug console on %s failed: %s", port, exc)


# protobuf's pure-Python message runtime: its descriptor pool and builder import it
# whichever backend runs, but with upb (the guest's) nothing of it is used, and it pulls
# in text_format, datetime and pickle: ~0.1 s of a booted VM's start under TCG
_UNUSED_WITH_UPB = ("google.protobuf.internal.python_message",)


def defer_imports(names: tuple[str, ...] = _UNUSED_WITH_UPB) -> None:
    """Register `names` as lazy modules: each loads when one of its attributes is
    first used, not when something imports it."""
    import importlib.util

    for name in names:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            continue
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        # on the parent package too: `from package import name` finds it there without
        # looking at the module's own attributes (which would load it)
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)


def main(argv: list[str] | None = None) -> int:
    _stdio_open()
    defer_imports()
    from agent.config import parse

    config = parse(argv)
    import logging

    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d agent[%(process)d] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    log = logging.getLogger("agent")
    log.debug("start-up: /init at %s, mounts done at %s, python exec at %s, arguments parsed "
              "at %.3fs", *(os.environ.get(f"PYKATA_T_{k}", "?") for k in ("INIT", "MOUNTS",
              "PYEXEC")), since_process_start())
    import asyncio

    try:
        status = asyncio.run(serve(config))
    except Exception:
        log.exception("agent failed")
        status = 1
    if os.getpid() == 1:  # PID 1 must not exit (kernel panic): stop the VM instead
        log.error("agent (PID 1) is exiting with status %d: powering off", status)
        from agent import libc

        libc.power_off()
    return status


if __name__ == "__main__":
    sys.exit(main())
