"""structlog for the shim: JSON lines to containerd's log FIFO, key=value in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(stream: TextIO | None, *, debug: bool = False, **context: str) -> None:
    """Route structlog and stdlib logging (ttrpc, qemu.qmp) to one stream.

    JSON when the stream is not a terminal (containerd's log FIFO, a file),
    key=value otherwise. `context` is bound to every line (namespace, id).
    """
    stream = stream or sys.stderr
    level = logging.DEBUG if debug else logging.INFO
    renderer: structlog.types.Processor
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # qemu.qmp is chatty at debug level; keep it at info unless asked
    logging.getLogger("qemu.qmp").setLevel(logging.DEBUG if debug else logging.WARNING)
    structlog.contextvars.bind_contextvars(runtime="io.containerd.pykata.v2", **context)
