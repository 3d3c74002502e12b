"""The shim against a hostile agent: every answer the guest gives is bounded and checked.

The agent is played by the scripted stand-in (tests/scripted_agent.py) for what it
answers, and by a peer that breaks the ttrpc byte stream (RawAgent) for how it
answers: a connection closed mid-call, a frame over 4 MiB, bytes that are no
protobuf. No VM; deadlines are made small so that nothing here waits long.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from types import SimpleNamespace

import pytest
from google.protobuf.any_pb2 import Any
from scripted_agent import ScriptedAgent, scripted_service, settle
from structlog.testing import capture_logs

import ttrpc
from protos.containerd.events import task_pb2 as events
from protos.containerd.task.v2 import shim_pb2 as api
from shim import guest_agent
from shim.agent_client import AgentAddress, AgentClient
from shim.guest_agent import GuestAgent
from shim.paths import CONTAINER_TYPE_ANNOTATION
from shim.pod import oom, process_io
from shim.pod.container import Container
from shim.pod.process import Process, State, Stdio
from shim.task_service import events as events_module
from shim.task_service.events import EventPublisher
from ttrpc.framing import (
    HEADER,
    MAX_MESSAGE_SIZE,
    TYPE_RESPONSE,
    encode_frame,
    encode_header,
)
from ttrpc.pb.request_pb2 import Request, Response

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
    init = tasks.pod.containers["c1"].init
    process_io.attach(init, tasks.pod.agent)
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


# -- OOM events --------------------------------------------------------------------


FLOOD = 20_000


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def away_publisher(tmp_path):
    """The real publisher, with containerd away: what it is given stays queued."""
    publisher = EventPublisher(str(tmp_path / "no-containerd.sock"), "pykata-test")
    yield publisher
    await publisher.close(timeout=0.1)


def flood_of_ooms(container_id: str, count: int) -> tuple[dict, asyncio.Event]:
    """A GetOOMEvent script: `count` answers at once, then none."""
    state = {"answered": 0}
    spent = asyncio.Event()

    async def answer(request):
        if state["answered"] == count:
            spent.set()
            await asyncio.Event().wait()
        state["answered"] += 1
        return SimpleNamespace(container_id=container_id)

    return {"GetOOMEvent": answer}, spent


async def test_an_oom_flood_reaches_containerd_once_and_queues_a_bounded_number(
    monkeypatch, away_publisher
):
    monkeypatch.setattr(oom, "OOM_POLL_BURST", 10**9)  # the pacing is tested on its own
    monkeypatch.setattr(oom, "OOM_EVENT_INTERVAL", 3600.0)
    tasks, agent, publisher = scripted_service(publisher=away_publisher)
    agent.answers, spent = flood_of_ooms("c1", FLOOD)
    before = rss_kib()
    with capture_logs() as logs:
        watcher = asyncio.ensure_future(tasks.pod.watchers.watch_oom(tasks.pod.sandbox))
        await asyncio.wait_for(spent.wait(), 60)
        watcher.cancel()
    grown = rss_kib() - before
    print(f"OOM flood of {FLOOD}: {publisher.queued} queued, RSS +{grown} KiB")
    assert agent.calls.count("GetOOMEvent") == FLOOD + 1
    # one event passed on: queued, or taken by the worker that retries it
    assert publisher.queued + len(publisher.published) <= 1
    assert publisher.dropped == 0
    drops = [entry for entry in logs if entry["event"].startswith("OOM events come faster")]
    assert len(drops) == 1 and drops[0]["container"] == "c1"


async def test_oom_events_for_unknown_containers_are_ignored(monkeypatch):
    monkeypatch.setattr(oom, "OOM_POLL_BURST", 10**9)
    tasks, agent, recorder = scripted_service()
    agent.answers, spent = flood_of_ooms("not-a-container-of-this-pod", 100)
    watcher = asyncio.ensure_future(tasks.pod.watchers.watch_oom(tasks.pod.sandbox))
    await asyncio.wait_for(spent.wait(), RETURNED)
    watcher.cancel()
    assert recorder.events == []


async def test_an_oom_kill_reported_after_the_container_was_deleted_still_counts(monkeypatch):
    """The exit and the OOM event race: containerd may delete the task first."""
    monkeypatch.setattr(oom, "OOM_POLL_BURST", 10**9)
    tasks, agent, recorder = scripted_service()
    tasks.pod.owned_by_sandbox_api = True  # the pod outlives its container here
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.exit("c1", 137)
    await settle()
    await tasks.Delete(api.DeleteRequest(id="c1"), None)
    assert "c1" not in tasks.pod.containers
    agent.answers, spent = flood_of_ooms("c1", 1)
    watcher = asyncio.ensure_future(tasks.pod.watchers.watch_oom(tasks.pod.sandbox))
    await asyncio.wait_for(spent.wait(), RETURNED)
    watcher.cancel()
    ooms = [event for topic, event in recorder.events if topic == "/tasks/oom"]
    assert [event.container_id for event in ooms] == ["c1"]


async def test_the_oom_poll_does_not_spin_on_an_agent_that_answers_at_once(monkeypatch):
    monkeypatch.setattr(oom, "OOM_POLL_BURST", 5)
    monkeypatch.setattr(oom, "OOM_POLL_RATE", 0.001)  # the 6th poll waits 1000 s
    tasks, agent, _ = scripted_service()
    agent.answers["GetOOMEvent"] = lambda request: SimpleNamespace(container_id="c1")
    watcher = asyncio.ensure_future(tasks.pod.watchers.watch_oom(tasks.pod.sandbox))
    for _ in range(20):
        await settle()
    watcher.cancel()
    assert agent.calls.count("GetOOMEvent") == 5


def test_the_pacer_spends_its_burst_then_keeps_to_its_rate():
    pacer = oom.PollPacer(rate=10.0, burst=3, clock=lambda: 100.0)  # a clock that stands
    assert [pacer.delay() for _ in range(6)] == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    now = [0.0]
    pacer = oom.PollPacer(rate=10.0, burst=1, clock=lambda: now[0])
    assert pacer.delay() == 0
    now[0] += 0.1  # one poll's worth of time later: at once again
    assert pacer.delay() == 0


def test_the_oom_gate_passes_one_event_per_container_per_interval():
    now = [0.0]
    gate = oom.OomGate(interval=1.0, clock=lambda: now[0])
    assert gate.allow("a") and gate.allow("b")
    assert not gate.allow("a")
    now[0] = 1.0
    assert gate.allow("a")
    assert gate.dropped == 1
    gate.retain({"b"})
    assert gate.allow("a")  # forgotten: a new container of that name starts afresh


async def test_a_publisher_flood_keeps_a_bounded_queue_and_every_exit(away_publisher):
    publisher, bound = away_publisher, events_module.MAX_QUEUED
    gc.collect()
    before = rss_kib()
    with capture_logs() as logs:
        for _ in range(FLOOD):  # no await: the worker has taken nothing yet
            publisher.publish("/tasks/oom", events.TaskOOM(container_id="c1"))
        for n in range(50):
            publisher.publish("/tasks/exit", events.TaskExit(container_id="c1", id=f"e{n}"))
    gc.collect()
    grown = rss_kib() - before
    print(f"publisher flood of {FLOOD}: {publisher.queued} queued, RSS +{grown} KiB")
    assert publisher.dropped == FLOOD - bound
    assert publisher.queued == bound + 50  # every exit, though the queue was full
    assert grown < 8 << 10  # KiB; unbounded, these 20,000 events took 18 MiB
    assert [entry["event"] for entry in logs].count(
        "event queue full: events other than exits are dropped"
    ) == 1


# -- an agent that never answers ---------------------------------------------------

SILENT = (
    "SignalProcess",
    "PauseContainer",
    "ResumeContainer",
    "StatsContainer",
    "UpdateContainer",
    "ExecProcess",
    "TtyWinResize",
    "RemoveContainer",
    "CloseStdin",
    "DestroySandbox",
)
LONG_POLLS = {"WaitProcess", "ReadStdout", "ReadStderr", "GetOOMEvent"}


@pytest.fixture
def quick_deadlines(monkeypatch):
    for method, timeout in guest_agent.TIMEOUTS.items():
        if timeout is not None:
            monkeypatch.setitem(guest_agent.TIMEOUTS, method, 0.05)
    monkeypatch.setattr(guest_agent, "DEFAULT_TIMEOUT", 0.05)


def exec_request(exec_id: str, terminal: bool = False) -> api.ExecProcessRequest:
    spec = Any(value=json.dumps({"args": ["sh"], "cwd": "/", "terminal": terminal}).encode())
    return api.ExecProcessRequest(id="c1", exec_id=exec_id, spec=spec, terminal=terminal)


async def test_no_task_call_waits_on_a_silent_agent_past_its_deadline(quick_deadlines):
    tasks, agent, _ = scripted_service()
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.never_answer(*SILENT)
    for call in (
        tasks.Kill(api.KillRequest(id="c1", signal=15), None),
        tasks.Pause(api.PauseRequest(id="c1"), None),
        tasks.Stats(api.StatsRequest(id="c1"), None),
        tasks.Update(api.UpdateTaskRequest(id="c1"), None),
    ):
        assert await code_of(call) == Code.DEADLINE_EXCEEDED
    state = await asyncio.wait_for(tasks.State(api.StateRequest(id="c1"), None), RETURNED)
    assert state.status == State.RUNNING.value
    await tasks.Exec(exec_request("tty", terminal=True), None)
    assert await code_of(tasks.Start(api.StartRequest(id="c1", exec_id="tty"), None)) == (
        Code.DEADLINE_EXCEEDED
    )
    tasks.pod.containers["c1"].execs["tty"].state = State.RUNNING
    resize = tasks.ResizePty(api.ResizePtyRequest(id="c1", exec_id="tty", width=80), None)
    assert await code_of(resize) == Code.DEADLINE_EXCEEDED
    unbounded = [name for name, timeout in agent.timeouts if timeout is None]
    assert set(unbounded) <= LONG_POLLS


async def test_a_container_is_deleted_though_the_agent_never_removes_it(quick_deadlines):
    tasks, agent, recorder = scripted_service()
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.exit("c1", 0)
    await settle()
    agent.never_answer("RemoveContainer")
    deleted = await asyncio.wait_for(tasks.Delete(api.DeleteRequest(id="c1"), None), RETURNED)
    assert deleted.exit_status == 0 and not tasks.pod.containers
    assert "RemoveContainer" in agent.calls
    assert recorder.topics()[-1] == "/tasks/delete"


@pytest.mark.parametrize("sandbox_container", [True, False])
async def test_a_silent_agents_pod_ends_with_the_sigkill_of_its_sandbox(
    quick_deadlines, sandbox_container
):
    tasks, agent, recorder = scripted_service()
    tasks.pod.owned_by_sandbox_api = False
    pod = ["c1"]
    if sandbox_container:  # CRI's pause container, with an app beside it
        tasks.pod.containers["c1"].spec = {"annotations": {CONTAINER_TYPE_ANNOTATION: "sandbox"}}
        tasks.pod.containers["app"] = Container(
            id="app", bundle="/nonexistent", spec={}, init=Process("app", "", 4242, Stdio())
        )
        pod.append("app")
    for container_id in pod:
        await tasks.Start(api.StartRequest(id=container_id), None)
    agent.never_answer(*SILENT)
    await asyncio.wait_for(tasks.Kill(api.KillRequest(id="c1", signal=9), None), RETURNED)
    assert tasks.pod.sandbox is None  # the VM is stopped: it kills whatever ran in it
    for container_id in pod:
        request = api.WaitRequest(id=container_id)
        waited = await asyncio.wait_for(tasks.Wait(request, None), RETURNED)
        assert waited.exit_status == 255
        await asyncio.wait_for(tasks.Delete(api.DeleteRequest(id=container_id), None), RETURNED)
    assert not tasks.pod.containers
    assert recorder.topics().count("/tasks/exit") == len(pod)


async def test_sigterm_to_a_silent_agent_is_an_error_and_the_pod_runs_on(quick_deadlines):
    tasks, agent, _ = scripted_service()
    tasks.pod.owned_by_sandbox_api = False
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.never_answer("SignalProcess")
    assert await code_of(tasks.Kill(api.KillRequest(id="c1", signal=15), None)) == (
        Code.DEADLINE_EXCEEDED
    )
    assert tasks.pod.sandbox is not None


# -- the byte stream: closed mid-call, oversized, not protobuf -----------------------


class RawAgent:
    """An agent at the byte level: reads each request, then does what `script` says next
    ("close", "oversized", "garbage"; "answer" once the script is spent)."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.methods: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def serve(self, path: str) -> None:
        self.server = await asyncio.start_unix_server(self._connection, path)

    async def _connection(self, reader, writer) -> None:
        try:
            while True:
                length, stream_id, _, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
                self.methods.append(Request.FromString(await reader.readexactly(length)).method)
                what = self.script.pop(0) if self.script else "answer"
                if what == "close":
                    return
                if what == "oversized":
                    size = MAX_MESSAGE_SIZE + 1
                    writer.write(encode_header(size, stream_id, TYPE_RESPONSE) + bytes(size))
                else:
                    payload = b"\xff\xff\xff" if what == "garbage" else b""
                    response = Response(payload=payload).SerializeToString()
                    writer.write(encode_frame(stream_id, TYPE_RESPONSE, response))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def raw_agent(tmp_path):
    """(RawAgent, a TaskService whose agent is a real AgentClient connected to it)."""
    raw = RawAgent([])
    path = str(tmp_path / "agent.sock")
    await raw.serve(path)
    client = AgentClient(AgentAddress(unix_path=path))
    tasks, _, recorder = scripted_service(ScriptedAgent())
    tasks.pod.sandbox.agent = GuestAgent(client)
    tasks.pod.containers["c1"].init.state = State.RUNNING
    yield raw, tasks, recorder
    await client.close()
    await raw.close()


async def test_an_agent_that_closes_mid_call_fails_the_call_not_the_shim(raw_agent):
    raw, tasks, _ = raw_agent
    raw.script = ["close"]
    assert await code_of(tasks.Kill(api.KillRequest(id="c1", signal=15), None)) == (
        Code.UNAVAILABLE
    )
    await asyncio.wait_for(tasks.Kill(api.KillRequest(id="c1", signal=15), None), RETURNED)
    assert raw.methods == ["SignalProcess", "SignalProcess"]  # on a new connection


async def test_a_wait_the_agent_drops_gives_the_process_its_exit(raw_agent):
    raw, tasks, recorder = raw_agent
    raw.script = ["close"]
    process = tasks.pod.containers["c1"].init
    await asyncio.wait_for(tasks.pod.wait_for_exit(process), RETURNED)
    assert process.exit_status == 255
    assert recorder.topics() == ["/tasks/exit"]


@pytest.mark.parametrize(("what", "code"), [
    ("oversized", Code.RESOURCE_EXHAUSTED),
    ("garbage", Code.INTERNAL),
])
async def test_an_answer_over_4_mib_or_not_protobuf_fails_one_call(raw_agent, what, code):
    raw, tasks, _ = raw_agent
    raw.script = [what]
    assert await code_of(tasks.Stats(api.StatsRequest(id="c1"), None)) == code
    stats = await asyncio.wait_for(tasks.Stats(api.StatsRequest(id="c1"), None), RETURNED)
    assert stats.stats.type_url == "io.containerd.cgroups.v1.Metrics"
    assert raw.methods == ["StatsContainer", "StatsContainer"]  # one connection, in sync
