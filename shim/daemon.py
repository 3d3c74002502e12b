"""The long-lived shim daemon: serves the Task API on the socket `start` handed over as fd 3.

`start` gives the daemon the bundle's `log` FIFO as stderr (as Go shims do), so
anything it says, a traceback at import included, lands in containerd's log;
and a readiness pipe, answered once the daemon serves or with the reason it
could not, so that `ctr` shows that reason.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import traceback

from shim.handoff import LISTENER_FD, READY_ENV, READY_WORD, ShimArgs

SHUTDOWN_GRACE = 5.0
PEERS_LEAVE_WITHIN = 1.0  # after a shutdown: how long containerd may take to hang up


class Readiness:
    """The write end of `start`'s readiness pipe (absent when run by hand)."""

    def __init__(self) -> None:
        value = os.environ.pop(READY_ENV, "")
        self._fd = int(value) if value.isdigit() else None
        if self._fd is not None:
            os.set_inheritable(self._fd, False)

    def _say(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode()[:4000])
        except OSError:
            pass  # start gave up waiting
        finally:
            os.close(self._fd)
            self._fd = None

    def ready(self) -> None:
        self._say(READY_WORD)

    def failed(self, reason: str) -> None:
        self._say(reason)


async def serve(args: ShimArgs, readiness: Readiness) -> int:
    import structlog

    import ttrpc
    from protos.containerd.runtime.sandbox.v1 import sandbox_pb2
    from protos.containerd.task.v2 import shim_pb2
    from shim.agent_client import AGENT_SERVICE, FORWARD_SERVICE, HEALTH_SERVICE
    from shim.monitor.rpc_metrics import RpcMetrics, request_names
    from shim.pod.pod import Pod
    from shim.reaper import reap_orphans_forever
    from shim.task_service.events import EventPublisher
    from shim.task_service.monitor_service import SandboxMonitor
    from shim.task_service.sandbox_service import SandboxService
    from shim.task_service.service import TaskService

    log = structlog.get_logger("shim.daemon")
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    publisher = EventPublisher(os.environ.get("TTRPC_ADDRESS", ""), args.namespace)
    doors: list[TaskService | SandboxService] = []

    def report(event) -> None:  # what the pod says on its own reaches both doors
        for door in doors:
            door.on_pod_event(event)

    pod = Pod(args.namespace, report)
    rpc = RpcMetrics(request_names([AGENT_SERVICE, HEALTH_SERVICE, FORWARD_SERVICE]))
    pod.use_monitor(SandboxMonitor(pod, rpc))
    tasks = TaskService(pod, publisher, shutdown)
    # containerd 2.x, CRI `sandboxer = "shim"`: the pod itself, on the same socket
    sandboxes = SandboxService(pod, shutdown)
    doors += [tasks, sandboxes]
    server = ttrpc.Server(authorize=ttrpc.require_same_uid, observer=rpc.observe_task)
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], tasks)
    server.register(sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"], sandboxes)
    # the socket start bound (its address is in the bundle): removed at shutdown
    await server.serve_fd(LISTENER_FD, unlink_on_shutdown=True)
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    reaper = loop.create_task(reap_orphans_forever())
    log.info("shim serving", pid=os.getpid())
    readiness.ready()
    await shutdown.wait()
    log.info("shim shutting down")
    await pod.delete_all()
    reaper.cancel()
    # let the reply to Shutdown/ShutdownSandbox reach containerd before the socket
    # closes: containerd hangs up once it has it (ShutdownSandbox must not see "closed")
    deadline = loop.time() + PEERS_LEAVE_WITHIN
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    log.info("shim exiting", peers_still_connected=server.connections)
    await server.shutdown(SHUTDOWN_GRACE)
    await publisher.close()
    return 0


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip().replace("\n", " ")


def run(args: ShimArgs) -> int:
    """Entry of the daemon process (the shim binary run without an action)."""
    readiness = Readiness()
    faulthandler.enable()  # a crash in C still leaves a trace on stderr (containerd's log)
    try:
        from shim import log as shim_log

        shim_log.configure(sys.stderr, debug=args.debug, namespace=args.namespace, id=args.id)
    except BaseException as exc:
        traceback.print_exc()
        readiness.failed(f"logging set-up failed: {_one_line(exc)}")
        return 1
    import structlog

    log = structlog.get_logger("shim.daemon")
    try:
        from shim.reaper import set_subreaper

        set_subreaper()
    except OSError as exc:
        log.warning("not a subreaper", error=str(exc))
    try:
        return asyncio.run(serve(args, readiness))
    except Exception as exc:
        log.exception("shim daemon failed")
        readiness.failed(_one_line(exc))
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
