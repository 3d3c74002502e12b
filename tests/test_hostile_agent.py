"""The shim against a hostile agent: every answer the guest gives is bounded and checked.

The agent is played by the scripted stand-in (tests/scripted_agent.py) for what it
answers, and by a peer that breaks the ttrpc byte stream (RawAgent) for how it
answers: a connection closed mid-call, a frame over 4 MiB, bytes that are no
protobuf. No VM; deadlines are made small so that nothing here waits long.
"""

from __future__ import annotations

import asyncio

import pytest
from scripted_agent import scripted_service, settle
from structlog.testing import capture_logs

import ttrpc
from protos.containerd.task.v2 import shim_pb2 as api

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
