"""The shim against a hostile agent: every answer the guest gives is bounded and checked.

The agent is played by the scripted stand-in (tests/scripted_agent.py) for what it
answers, and by a peer that breaks the ttrpc byte stream (RawAgent) for how it
answers: a connection closed mid-call, a frame over 4 MiB, bytes that are no
protobuf. No VM; deadlines are made small so that nothing here waits long.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from scripted_agent import scripted_service, settle
from structlog.testing import capture_logs

import ttrpc
from protos.containerd.task.v2 import shim_pb2 as api
from shim.task_service.process import Stdio

Code = ttrpc.Code
RETURNED = 10.0  # seconds: a generous "it returned", never a timing claim


async def code_of(call) -> Code:
    with pytest.raises(ttrpc.TTRPCError) as caught:
        await asyncio.wait_for(call, RETURNED)
    return caught.value.code


# -- exit statuses -----------------------------------------------------------------


@pytest.mark.parametrize("raw", [-1, 256, 2**31])
async def test_a_forged_exit_status_reaches_containerd_as_255(raw):
    tasks, agent, recorder = scripted_service()
    await tasks.Start(api.StartRequest(id="c1"), None)
    with capture_logs() as logs:
        agent.exit("c1", raw)
        await settle()
    exits = [event for topic, event in recorder.events if topic == "/tasks/exit"]
    assert [event.exit_status for event in exits] == [255]
    waited = await asyncio.wait_for(tasks.Wait(api.WaitRequest(id="c1"), None), RETURNED)
    deleted = await tasks.Delete(api.DeleteRequest(id="c1"), None)
    assert waited.exit_status == deleted.exit_status == 255
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["container"], w["exec_id"], w["raw_status"]) for w in warnings] == [("c1", "", raw)]


@pytest.mark.parametrize("status", [0, 1, 137, 255])
async def test_a_real_exit_status_passes_unchanged(status):
    tasks, agent, _ = scripted_service()
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.exit("c1", status)
    await settle()
    waited = await tasks.Wait(api.WaitRequest(id="c1"), None)
    assert waited.exit_status == status


# -- WriteStdin --------------------------------------------------------------------


async def stdin_copy(tmp_path, take):
    """Start c1 with a stdin FIFO whose WriteStdin answers `take(request)`; write 1000 bytes
    and wait until the copy ends by itself."""
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    tasks, agent, _ = scripted_service(stdio=Stdio(stdin=str(fifo)))
    agent.answers["WriteStdin"] = lambda request: SimpleNamespace(len=take(request))
    init = tasks.containers["c1"].init
    tasks._attach_io(init)
    await tasks.Start(api.StartRequest(id="c1"), None)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"x" * 1000)
        os.close(writer)  # EOF: a copy that works ends with CloseStdin
        writer = -1
        await asyncio.wait_for(asyncio.shield(init.stdin_copier.task), RETURNED)
    finally:
        if writer >= 0:
            os.close(writer)
    return agent


@pytest.mark.parametrize("answered", [0, 1001, 2**40])
async def test_an_impossible_write_stdin_answer_stops_the_copy(tmp_path, answered):
    with capture_logs() as logs:
        agent = await stdin_copy(tmp_path, lambda request: answered)
    assert agent.calls.count("WriteStdin") == 1
    assert "CloseStdin" not in agent.calls
    stopped = [entry for entry in logs if entry["event"] == "stdin copy stopped"]
    assert stopped[0]["log_level"] == "warning"
    assert f"len={answered} for 1000 bytes sent" in stopped[0]["reason"]


async def test_a_partial_write_stdin_answer_is_followed_by_the_rest(tmp_path):
    sent = bytearray()

    def take_half(request):
        part = max(1, len(request.data) // 2)
        sent.extend(request.data[:part])
        return part

    agent = await stdin_copy(tmp_path, take_half)
    assert bytes(sent) == b"x" * 1000
    assert agent.calls[-1] == "CloseStdin"
