"""The long-lived shim daemon: serves the Task API on the socket `start` handed over as fd 3."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from shim.cli import ShimArgs
from shim.paths import socket_address

LISTENER_FD = 3
SHUTDOWN_GRACE = 5.0


async def serve(args: ShimArgs) -> int:
    import structlog

    import ttrpc
    from protos.containerd.task.v2 import shim_pb2
    from shim.reaper import reap_orphans_forever
    from shim.task_service.events import EventPublisher
    from shim.task_service.service import TaskService

    log = structlog.get_logger("shim.daemon")
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    publisher = EventPublisher(os.environ.get("TTRPC_ADDRESS", ""), args.namespace)
    service = TaskService(args.namespace, publisher, shutdown)
    server = ttrpc.Server(authorize=ttrpc.require_same_uid)
    server.register(shim_pb2.DESCRIPTOR.services_by_name["Task"], service)
    await server.serve_fd(LISTENER_FD)
    loop.add_signal_handler(signal.SIGTERM, shutdown.set)
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    reaper = loop.create_task(reap_orphans_forever())
    log.info("shim serving", pid=os.getpid())
    await shutdown.wait()
    log.info("shim shutting down")
    for container in list(service.containers.values()):
        try:
            await service._delete_container(container)
        except Exception as exc:
            log.error("cleanup at shutdown failed", container=container.id, error=str(exc))
    reaper.cancel()
    await server.shutdown(SHUTDOWN_GRACE)
    await publisher.close()
    address = args.socket or socket_address(args.address, args.namespace, args.id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address.removeprefix("unix://"))
    return 0


def run(args: ShimArgs) -> int:
    """Entry of the daemon process (the shim binary run without an action)."""
    from shim import log as shim_log

    bundle = args.bundle or os.getcwd()
    stream = shim_log.open_log_fifo(bundle)
    shim_log.configure(stream, debug=args.debug, namespace=args.namespace, id=args.id)
    try:
        from shim.reaper import set_subreaper

        set_subreaper()
    except OSError as exc:
        import structlog

        structlog.get_logger("shim.daemon").warning("not a subreaper", error=str(exc))
    try:
        return asyncio.run(serve(args))
    except Exception:
        import structlog

        structlog.get_logger("shim.daemon").exception("shim daemon failed")
        return 1
    finally:
        sys.stdout.flush()
