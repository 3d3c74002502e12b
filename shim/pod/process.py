"""A process the Task API knows: a container's init or an exec, with its state and stdio.

Each process has one state machine, shaped like containerd's runc shim: created,
running, paused, stopped, deleted. Every Task call that changes a process holds
its lock for the whole call (an agent call included), so Start, Kill, Pause,
Resume and Delete of one process never interleave. An exit is the exception: it
arrives from the agent or from the VM's death in any state and always wins, so a
call that finishes after it leaves the process stopped.

An exit status comes from the guest, which may forge it: a status outside 0..255
(what a Linux process can exit with, 128+N for a signal) is recorded as 255, the
status of a process whose VM died under it, with one warning naming the raw value;
containerd's uint32 fields would refuse a negative one, and a status above 255
is no real exit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from shim.pod.stdio import InputCopier, OutputCopier
from shim.task_service.timestamps import timestamp

log = structlog.get_logger(__name__)
NEVER_STARTED_STATUS = 128 + 9  # a process deleted before it ran: as if SIGKILLed
MAX_EXIT_STATUS = 255
OUT_OF_RANGE_STATUS = 255  # what a status outside 0..MAX_EXIT_STATUS is recorded as


class State(Enum):
    """Process states; the values are containerd.v1.types.Status numbers (DELETED is ours)."""

    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    DELETED = 100

    @property
    def status(self) -> int:
        """What the Task API's State reports: a deleted process is a stopped one."""
        return State.STOPPED.value if self is State.DELETED else self.value

    @property
    def word(self) -> str:
        return self.name.lower()


# Where each state may go; STOPPED is reached from any live state by an exit.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.RUNNING, State.STOPPED}),
    State.RUNNING: frozenset({State.PAUSED, State.STOPPED}),
    State.PAUSED: frozenset({State.RUNNING, State.STOPPED}),
    State.STOPPED: frozenset({State.DELETED}),
    State.DELETED: frozenset(),
}


class ProcessStateError(Exception):
    """A call that the process's state does not allow; the message says which state."""


@dataclass
class Stdio:
    """containerd's FIFO paths for a process ('' = not wanted)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass
class Process:
    """One process: the container's init (exec_id '') or an exec."""

    container_id: str
    exec_id: str
    pid: int  # what the Task API reports: QEMU's pid, as Kata does
    stdio: Stdio
    spec: object = None  # grpc.Process for execs
    state: State = State.CREATED
    exit_status: int = 0
    exited_at_ns: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stdin_copier: InputCopier | None = None
    output_copiers: list[OutputCopier] = field(default_factory=list)
    waiter: asyncio.Task[None] | None = None

    @property
    def agent_exec_id(self) -> str:
        """The id the agent knows this process by (the init's is the container id)."""
        return self.exec_id or self.container_id

    @property
    def name(self) -> str:
        return f"exec {self.exec_id}" if self.exec_id else f"container {self.container_id}"

    def exited_at(self) -> Timestamp:
        return timestamp(self.exited_at_ns)

    def require(self, action: str, *allowed: State) -> None:
        """Raise ProcessStateError unless the process is in one of `allowed` states."""
        if self.state not in allowed:
            raise ProcessStateError(f"cannot {action} {self.name}: it is {self.state.word}")

    def move(self, to: State) -> bool:
        """Change state if the machine allows it; False when an exit got there first."""
        if to not in TRANSITIONS[self.state]:
            return False
        self.state = to
        return True

    def set_exited(self, status: int) -> bool:
        """Record the exit (any live state); False if it was already recorded.

        A status outside 0..255 is recorded as 255 (see the module docstring)."""
        if self.exited.is_set() or not self.move(State.STOPPED):
            return False
        if not 0 <= status <= MAX_EXIT_STATUS:
            log.warning(
                "exit status out of range: recorded as 255",
                container=self.container_id,
                exec_id=self.exec_id,
                raw_status=status,
            )
            status = OUT_OF_RANGE_STATUS
        self.exit_status = status
        self.exited_at_ns = time.time_ns()
        self.exited.set()
        return True

    def close_io(self) -> None:
        """Stop every copier (used when the process is deleted or the VM went away)."""
        if self.stdin_copier is not None:
            self.stdin_copier.stop()
        for copier in self.output_copiers:
            if copier.task is not None and not copier.task.done():
                copier.task.cancel()
            else:
                copier.close()
