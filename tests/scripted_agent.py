"""A scripted stand-in for the guest agent, and a TaskService whose pod runs on it (no VM).

Shared by the tests that drive the Task API against an agent whose calls can be
held open, answered with forged values, or never answered at all.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import ttrpc
from shim.config import Config
from shim.guest_agent import GuestAgent
from shim.pod.container import Container
from shim.pod.pod import Pod
from shim.pod.process import Process, Stdio
from shim.task_service.service import TaskService


class ScriptedAgent:
    """The transport of a GuestAgent: answers the agent calls the pod makes.

    `hold[name]` keeps a call open until its event is set; `answers[name]` is called
    with the request and gives the answer (or raises); `exit()` ends a WaitProcess.
    Deadlines are the ones GuestAgent gives each call (shim.guest_agent.TIMEOUTS): one
    still unanswered at its deadline fails with DEADLINE_EXCEEDED. `timeouts` records
    the deadline of every call. `close()` is the VM's end: calls open and later fail
    with UNAVAILABLE.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.timeouts: list[tuple[str, float | None]] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.answers: dict[str, Callable[[Any], Any]] = {}
        self.exits: dict[str, asyncio.Future[int]] = {}
        self._closed = asyncio.Event()

    async def close(self, reason: str = "agent client closed") -> None:
        self._closed.set()

    def never_answer(self, *names: str) -> None:
        """These calls stay unanswered until their deadline (forever without one)."""
        for name in names:
            self.hold[name] = asyncio.Event()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(request, timeout: float | None, metadata=None):
            self.calls.append(name)
            self.timeouts.append((name, timeout))
            try:
                async with asyncio.timeout(timeout):
                    return await self._unless_closed(self._answer(name, request))
            except TimeoutError:
                raise ttrpc.TTRPCError(
                    ttrpc.Code.DEADLINE_EXCEEDED,
                    f"the agent did not answer {name} within {timeout:g} s",
                ) from None

        return call

    async def request(self, method: str, message: Any, answer: Any, timeout: float | None):
        """What GuestAgent asks of its transport."""
        return await getattr(self, method)(message, timeout=timeout)

    async def _unless_closed(self, answer: Any) -> Any:
        task = asyncio.ensure_future(answer)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, closed):
                pending.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise ttrpc.TTRPCError(ttrpc.Code.UNAVAILABLE, "ttrpc: connection closed")

    async def _answer(self, name: str, request: Any) -> Any:
        gate = self.hold.get(name)
        if gate is not None:
            await gate.wait()
        script = self.answers.get(name)
        if script is not None:
            answer = script(request)
            return await answer if inspect.isawaitable(answer) else answer
        if name == "WaitProcess":
            future = self.exits.setdefault(
                request.exec_id, asyncio.get_running_loop().create_future()
            )
            return SimpleNamespace(status=await asyncio.shield(future))
        return SimpleNamespace(
            len=len(getattr(request, "data", b"")), data=b"", container_id="", metrics=""
        )

    def exit(self, agent_exec_id: str, status: int) -> None:
        future = self.exits.setdefault(agent_exec_id, asyncio.get_running_loop().create_future())
        future.set_result(status)


class Recorder:
    """Stands where the EventPublisher stands: records what is published."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def publish(self, topic: str, event: object) -> None:
        self.events.append((topic, event))

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.events]


class ScriptedSandbox:
    """Stands where the pod's Sandbox stands: a running VM whose agent is scripted."""

    def __init__(self, agent: ScriptedAgent) -> None:
        self.agent = GuestAgent(agent)
        self.config = Config()  # the defaults: 1 vCPU, 512 MiB
        self.vm = SimpleNamespace(vcpus=1, memory_mib=512)
        self.pid = 4242
        self.id = "c1"
        self.stopped = False

    def remove_container(self, container_id: str) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True
        await self.agent.close()


def scripted_service(
    agent: ScriptedAgent | None = None, publisher: Any = None, stdio: Stdio | None = None
) -> tuple[TaskService, ScriptedAgent, Any]:
    """A TaskService whose pod runs on `agent`, with one created container "c1".

    The Sandbox API owns the pod, so deleting the last container stops no VM; stopping
    the pod closes the agent, as the VM's stop does. The pod is `tasks.pod`."""
    agent = agent or ScriptedAgent()
    publisher = publisher if publisher is not None else Recorder()
    tasks: TaskService | None = None

    def report(event: Any) -> None:
        assert tasks is not None
        tasks.on_pod_event(event)

    pod = Pod("pykata-test", report)
    tasks = TaskService(pod, publisher, asyncio.Event())
    pod.sandbox = ScriptedSandbox(agent)  # type: ignore[assignment]
    pod.owned_by_sandbox_api = True
    pod.containers["c1"] = Container(
        id="c1", bundle="/nonexistent", spec={}, init=Process("c1", "", 4242, stdio or Stdio())
    )
    return tasks, agent, publisher


async def settle() -> None:
    """Let the tasks that are ready run a few steps."""
    for _ in range(5):
        await asyncio.sleep(0)
