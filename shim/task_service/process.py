"""A process the Task API knows: a container's init or an exec, with its state and stdio."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum

from google.protobuf.timestamp_pb2 import Timestamp

from shim.task_service.stdio import InputCopier, OutputCopier


class State(Enum):
    """Process states, as containerd.v1.types.Status numbers them."""

    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4


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
    stdin_copier: InputCopier | None = None
    output_copiers: list[OutputCopier] = field(default_factory=list)
    waiter: asyncio.Task[None] | None = None

    @property
    def agent_exec_id(self) -> str:
        """The id the agent knows this process by (the init's is the container id)."""
        return self.exec_id or self.container_id

    def exited_at(self) -> Timestamp:
        stamp = Timestamp()
        if self.exited_at_ns:
            stamp.FromNanoseconds(self.exited_at_ns)
        return stamp

    def set_exited(self, status: int) -> None:
        if self.exited.is_set():
            return
        self.exit_status = status
        self.exited_at_ns = time.time_ns()
        self.state = State.STOPPED
        self.exited.set()

    def close_io(self) -> None:
        """Stop every copier (used when the process is deleted or the VM went away)."""
        if self.stdin_copier is not None:
            self.stdin_copier.stop()
        for copier in self.output_copiers:
            if copier.task is not None and not copier.task.done():
                copier.task.cancel()
            else:
                copier.close()
