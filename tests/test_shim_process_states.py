"""The per-process state machine of the Task API: every call checks and changes state under
the process's lock, and an exit wins in any state.

The guest agent is replaced by a scripted stand-in whose calls can be held open, so
that each race (an exit during Pause, Kill during Start) happens on purpose.
"""

from __future__ import annotations

import asyncio

import pytest
from scripted_agent import scripted_service, settle

import ttrpc
from protos.containerd.task.v2 import shim_pb2 as api
from shim.pod.container import Container
from shim.pod.process import TRANSITIONS, Process, State, Stdio
from shim.task_service.service import TaskService

Code = ttrpc.Code


@pytest.fixture
def service():
    return scripted_service()


async def code_of(call) -> tuple[Code, str]:
    with pytest.raises(ttrpc.TTRPCError) as caught:
        await call
    return caught.value.code, caught.value.message


def state(tasks: TaskService, exec_id: str = "") -> State:
    return tasks.pod.containers["c1"].process(exec_id).state


async def test_an_exit_during_pause_leaves_the_container_stopped(service):
    tasks, agent, recorder = service
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.hold["PauseContainer"] = asyncio.Event()
    pause = asyncio.ensure_future(tasks.Pause(api.PauseRequest(id="c1"), None))
    await settle()
    agent.exit("c1", 3)
    await settle()
    assert state(tasks) is State.STOPPED
    agent.hold["PauseContainer"].set()
    code, message = await code_of(pause)
    assert (code, message) == (Code.FAILED_PRECONDITION, "container c1 exited during pause")
    assert state(tasks) is State.STOPPED
    assert "/tasks/paused" not in recorder.topics()
    assert recorder.topics().count("/tasks/exit") == 1


async def test_an_exit_during_resume_leaves_the_container_stopped(service):
    tasks, agent, recorder = service
    await tasks.Start(api.StartRequest(id="c1"), None)
    await tasks.Pause(api.PauseRequest(id="c1"), None)
    assert state(tasks) is State.PAUSED
    agent.hold["ResumeContainer"] = asyncio.Event()
    resume = asyncio.ensure_future(tasks.Resume(api.ResumeRequest(id="c1"), None))
    await settle()
    agent.exit("c1", 0)
    await settle()
    agent.hold["ResumeContainer"].set()
    code, _ = await code_of(resume)
    assert code == Code.FAILED_PRECONDITION
    assert state(tasks) is State.STOPPED
    assert "/tasks/resumed" not in recorder.topics()


async def test_kill_waits_for_a_start_in_flight_then_signals_the_started_process(service):
    tasks, agent, recorder = service
    agent.hold["StartContainer"] = asyncio.Event()
    start = asyncio.ensure_future(tasks.Start(api.StartRequest(id="c1"), None))
    await settle()
    kill = asyncio.ensure_future(tasks.Kill(api.KillRequest(id="c1", signal=15), None))
    await settle()
    assert not kill.done(), "Kill must not act on a process whose Start is in flight"
    agent.hold["StartContainer"].set()
    await start
    await kill
    assert agent.calls.index("SignalProcess") > agent.calls.index("StartContainer")
    assert state(tasks) is State.RUNNING, "the exit comes from the guest, not from Kill"
    agent.exit("c1", 143)
    await settle()
    assert state(tasks) is State.STOPPED
    assert "/tasks/exit" in recorder.topics()


@pytest.mark.parametrize("exec_id", ["", "e1"])
async def test_a_process_killed_before_it_started_reports_one_status_everywhere(service, exec_id):
    tasks, agent, recorder = service
    if exec_id:
        tasks.pod.containers["c1"].init.state = State.RUNNING
        tasks.pod.containers["c1"].execs[exec_id] = Process("c1", exec_id, 4242, Stdio())
    await tasks.Kill(api.KillRequest(id="c1", exec_id=exec_id, signal=15), None)
    assert "SignalProcess" not in agent.calls
    wait = await tasks.Wait(api.WaitRequest(id="c1", exec_id=exec_id), None)
    status = await tasks.State(api.StateRequest(id="c1", exec_id=exec_id), None)
    deleted = await tasks.Delete(api.DeleteRequest(id="c1", exec_id=exec_id), None)
    exits = [event for topic, event in recorder.events if topic == "/tasks/exit"]
    assert [e.exit_status for e in exits] == [143]
    assert wait.exit_status == status.exit_status == deleted.exit_status == 143
    assert status.status == State.STOPPED.value


@pytest.mark.parametrize("exec_id", ["", "e1"])
async def test_a_process_deleted_before_it_started_exits_137_once(service, exec_id):
    tasks, _, recorder = service
    if exec_id:
        tasks.pod.containers["c1"].execs[exec_id] = Process("c1", exec_id, 4242, Stdio())
    deleted = await tasks.Delete(api.DeleteRequest(id="c1", exec_id=exec_id), None)
    assert deleted.exit_status == 137
    assert recorder.topics() == ["/tasks/exit", "/tasks/delete"]
    assert [e.exit_status for _, e in recorder.events] == [137, 137]


async def test_an_exit_in_each_live_state_wins_once(service):
    tasks, _, recorder = service
    container = tasks.pod.containers["c1"]
    for exec_id, live in (("a", State.CREATED), ("b", State.RUNNING), ("c", State.PAUSED)):
        process = Process("c1", exec_id, 4242, Stdio(), state=live)
        container.execs[exec_id] = process
        tasks.pod.exited(process, 7)
        tasks.pod.exited(process, 9)
        assert (process.state, process.exit_status) == (State.STOPPED, 7)
    assert recorder.topics().count("/tasks/exit") == 3


async def test_calls_a_state_does_not_allow_say_which_state(service):
    tasks, agent, _ = service
    assert await code_of(tasks.Resume(api.ResumeRequest(id="c1"), None)) == (
        Code.FAILED_PRECONDITION,
        "cannot resume container c1: it is created",
    )
    await tasks.Start(api.StartRequest(id="c1"), None)
    assert await code_of(tasks.Start(api.StartRequest(id="c1"), None)) == (
        Code.FAILED_PRECONDITION,
        "cannot start container c1: it is running",
    )
    assert await code_of(tasks.Delete(api.DeleteRequest(id="c1"), None)) == (
        Code.FAILED_PRECONDITION,
        "cannot delete container c1: it is running; kill it first",
    )
    agent.exit("c1", 0)
    await settle()
    assert await code_of(tasks.Kill(api.KillRequest(id="c1", signal=9), None)) == (
        Code.NOT_FOUND,
        "container c1 has already exited",
    )
    assert await code_of(tasks.Pause(api.PauseRequest(id="c1"), None)) == (
        Code.FAILED_PRECONDITION,
        "cannot pause container c1: it is stopped",
    )


async def test_a_deleted_exec_cannot_be_used_again(service):
    tasks, _, _ = service
    tasks.pod.containers["c1"].init.state = State.RUNNING
    process = Process("c1", "e1", 4242, Stdio())
    tasks.pod.containers["c1"].execs["e1"] = process
    await tasks.Delete(api.DeleteRequest(id="c1", exec_id="e1"), None)
    assert process.state is State.DELETED
    assert await code_of(tasks.Start(api.StartRequest(id="c1", exec_id="e1"), None)) == (
        Code.NOT_FOUND,
        "exec e1 of container c1 not found",
    )
    assert not process.move(State.RUNNING)


def test_the_transitions_are_those_of_containerds_runc_shim():
    assert TRANSITIONS[State.DELETED] == frozenset()
    assert TRANSITIONS[State.STOPPED] == {State.DELETED}
    for live in (State.CREATED, State.RUNNING, State.PAUSED):
        assert State.STOPPED in TRANSITIONS[live]
    assert State.PAUSED not in TRANSITIONS[State.CREATED]
    assert State.DELETED.status == State.STOPPED.value


@pytest.mark.parametrize(
    ("status", "others", "removes"),
    [
        (0, 0, False),  # the pod's last: DestroySandbox removes it as the VM stops
        (137, 0, False),  # even OOM-killed: the agent reported the kill with the exit
        (0, 1, True),  # the pod lives on
    ],
)
async def test_the_last_container_is_left_to_destroy_sandbox(service, status, others, removes):
    tasks, agent, _ = service
    tasks.pod.owned_by_sandbox_api = False
    stopped = []

    async def stop():
        stopped.append(True)

    tasks.pod.sandbox.stop = stop
    for n in range(others):
        tasks.pod.containers[f"o{n}"] = Container(
            id=f"o{n}", bundle="/nonexistent", spec={}, init=Process(f"o{n}", "", 1, Stdio())
        )
    await tasks.Start(api.StartRequest(id="c1"), None)
    agent.exit("c1", status)
    await settle()
    await tasks.Delete(api.DeleteRequest(id="c1"), None)
    assert ("RemoveContainer" in agent.calls) is removes
    assert bool(stopped) is (others == 0)
