"""Publishing task events to containerd: Events/Forward over ttrpc at $TTRPC_ADDRESS."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

import ttrpc
from protos.containerd.services.events.ttrpc.v1 import events_pb2
from shim.task_service.timestamps import timestamp_now

log = structlog.get_logger(__name__)
EVENTS = events_pb2.DESCRIPTOR.services_by_name["Events"]
NAMESPACE_KEY = "containerd-namespace-ttrpc"
FORWARD_TIMEOUT = 5.0
PUBLISHED_KEPT = 64
# Events waiting for containerd, exits aside; more are dropped. Exits are never dropped:
# each process exits once and containerd made every process, so they are bounded already,
# and an exit lost would leave a task running forever in containerd's eyes.
MAX_QUEUED = 1024
NEVER_DROPPED = frozenset({"/tasks/exit"})


def pack_event(event: Message) -> Any:
    """An Any as containerd's typeurl makes it: the bare full name as type URL."""
    return Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


class EventPublisher:
    """Sends events in order, one at a time; retries each while containerd is unreachable.

    Events are queued, so publishing never blocks a Task API call. An event that
    still fails after `attempts` tries (with a growing pause) is dropped and logged.
    The queue holds at most MAX_QUEUED events other than exits: one more is dropped
    (counted in `dropped`; logged when dropping starts and when it stops), so a flood
    (from the guest, or while containerd is away) cannot grow the shim without end.
    """

    def __init__(self, address: str, namespace: str, attempts: int = 6) -> None:
        self._address = address
        self._namespace = namespace
        self._attempts = attempts
        self._queue: asyncio.Queue[events_pb2.Envelope | None] = asyncio.Queue()
        self._client: ttrpc.Client | None = None
        self._worker: asyncio.Task[None] | None = None
        self._bounded = 0  # queued events that MAX_QUEUED counts (all but exits)
        self._dropping = False
        self.dropped = 0
        # the last topics sent, in order (for tests and debugging); bounded, the daemon lives long
        self.published: list[str] = []

    @property
    def queued(self) -> int:
        """Events waiting to be sent (exits included)."""
        return self._queue.qsize()

    def publish(self, topic: str, event: Message) -> None:
        """Queue an event for containerd (dropped if the queue is full, exits never)."""
        if not self._address:
            log.debug("no TTRPC_ADDRESS: event not published", topic=topic)
            return
        if topic not in NEVER_DROPPED:
            if self._bounded >= MAX_QUEUED:
                self._drop(topic)
                return
            self._bounded += 1
        envelope = events_pb2.Envelope(
            timestamp=timestamp_now(),
            namespace=self._namespace,
            topic=topic,
            event=pack_event(event),
        )
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        self._queue.put_nowait(envelope)

    def _drop(self, topic: str) -> None:
        self.dropped += 1
        if not self._dropping:
            self._dropping = True
            log.error(
                "event queue full: events other than exits are dropped",
                topic=topic,
                limit=MAX_QUEUED,
                dropped=self.dropped,
            )

    def _dequeued(self, envelope: events_pb2.Envelope) -> None:
        if envelope.topic in NEVER_DROPPED:
            return
        self._bounded -= 1
        if self._dropping and self._bounded <= MAX_QUEUED // 2:
            self._dropping = False
            log.warning("event queue has room again", dropped=self.dropped)

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within timeout), then close the connection."""
        if self._worker is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except TimeoutError:
                log.warning("events still queued at exit were dropped", left=self._queue.qsize())
                self._worker.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        while True:
            envelope = await self._queue.get()
            if envelope is None:
                return
            self._dequeued(envelope)
            await self._send(envelope)

    async def _send(self, envelope: events_pb2.Envelope) -> None:
        request = events_pb2.ForwardRequest(envelope=envelope)
        for attempt in range(1, self._attempts + 1):
            try:
                client = await self._connect()
                await ttrpc.Stub(client, EVENTS).Forward(request, timeout=FORWARD_TIMEOUT)
                self.published.append(envelope.topic)
                del self.published[:-PUBLISHED_KEPT]
                return
            except (ttrpc.TTRPCError, OSError) as exc:
                log.warning(
                    "forwarding an event to containerd failed",
                    topic=envelope.topic,
                    attempt=attempt,
                    error=str(exc),
                )
                if self._client is not None:
                    with contextlib.suppress(Exception):
                        await self._client.close()
                    self._client = None
                if attempt < self._attempts:
                    await asyncio.sleep(min(attempt, 5) * 0.5)
        log.error("dropped an event containerd never accepted", topic=envelope.topic)

    async def _connect(self) -> ttrpc.Client:
        if self._client is None or self._client.closed:
            self._client = await ttrpc.Client.connect(
                self._address, metadata={NAMESPACE_KEY: self._namespace}, timeout=FORWARD_TIMEOUT
            )
        return self._client
