"""Our ttrpc client against a real containerd 1.6: events Forward, and its error codes."""

from __future__ import annotations

import asyncio
import selectors
import subprocess
import time
import uuid

import pytest
from google.protobuf.any_pb2 import Any
from google.protobuf.timestamp_pb2 import Timestamp

import ttrpc
from protos.containerd.events import task_pb2 as events
from protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward

EVENTS = forward.DESCRIPTOR.services_by_name["Events"]
NAMESPACE = "pykata-interop"


def read_lines_until(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Lines `ctr events` printed, up to and including the first that holds needle."""
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.2):
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            break
    return lines


def task_exit_envelope(container_id: str) -> forward.ForwardRequest:
    exit_event = events.TaskExit(
        container_id=container_id, id=container_id, pid=4242, exit_status=3
    )
    exit_event.exited_at.GetCurrentTime()
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    return forward.ForwardRequest(
        envelope=forward.Envelope(
            timestamp=timestamp,
            namespace=NAMESPACE,
            topic="/tasks/exit",
            # containerd's typeurl: the bare full name, no type.googleapis.com/ prefix
            event=Any(type_url="containerd.events.TaskExit", value=exit_event.SerializeToString()),
        )
    )


def test_forwarded_task_exit_reaches_ctr_events(containerd):
    container_id = f"interop-{uuid.uuid4().hex[:8]}"
    watcher = subprocess.Popen(
        containerd.ctr_argv("events", namespace=NAMESPACE),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.5)  # let ctr subscribe before we publish

        async def publish() -> None:
            async with await ttrpc.Client.connect(
                containerd.ttrpc_address, metadata={"containerd-namespace-ttrpc": NAMESPACE}
            ) as client:
                answer = await ttrpc.Stub(client, EVENTS).Forward(
                    task_exit_envelope(container_id), timeout=10
                )
                assert answer.ByteSize() == 0  # google.protobuf.Empty

        asyncio.run(publish())
        lines = read_lines_until(watcher, container_id, timeout=15)
    finally:
        watcher.kill()
        watcher.wait()
    seen = [line for line in lines if container_id in line]
    assert seen, f"ctr events did not show the event; it printed: {lines}"
    assert "/tasks/exit" in seen[0]
    assert NAMESPACE in seen[0]
    assert '"exit_status":3' in seen[0].replace(" ", "")


@pytest.mark.parametrize(
    ("service", "method", "message"),
    [
        ("containerd.services.events.ttrpc.v1.Events", "NoSuchMethod", "method NoSuchMethod"),
        ("containerd.no.such.Service", "Forward", "service containerd.no.such.Service"),
    ],
)
def test_containerd_answers_unimplemented(containerd, service, method, message):
    async def call() -> ttrpc.TTRPCError:
        async with await ttrpc.Client.connect(containerd.ttrpc_address) as client:
            with pytest.raises(ttrpc.TTRPCError) as caught:
                await client.call(service, method, b"", timeout=10)
            return caught.value

    error = asyncio.run(call())
    assert error.code == ttrpc.Code.UNIMPLEMENTED
    assert error.message == message


def test_containerd_rejects_a_garbage_payload(containerd):
    async def call() -> ttrpc.TTRPCError:
        async with await ttrpc.Client.connect(containerd.ttrpc_address) as client:
            with pytest.raises(ttrpc.TTRPCError) as caught:
                await client.call(
                    "containerd.services.events.ttrpc.v1.Events", "Forward", b"\xff\xff", timeout=10
                )
            # the connection survives the bad call
            with pytest.raises(ttrpc.TTRPCError) as again:
                await client.call("containerd.services.events.ttrpc.v1.Events", "Nope", b"")
            assert again.value.code == ttrpc.Code.UNIMPLEMENTED
            return caught.value

    error = asyncio.run(call())
    # Go ttrpc 1.1 reports payload decoding failures as INTERNAL (we answer
    # INVALID_ARGUMENT, as the issue asks; clients must accept either).
    assert error.code == ttrpc.Code.INTERNAL
    assert error.message.startswith("ttrpc: error unmarshalling payload")
