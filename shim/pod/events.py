"""What a pod reports on its own, through the one callback it is given: the doors turn
these into containerd's events (/tasks/exit, /tasks/oom) and the Sandbox API's
WaitSandbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shim.pod.process import Process

DEAD_VM_STATUS = 255  # the exit status of a process whose VM died under it


@dataclass(frozen=True)
class ProcessExited:
    """A process of the pod exited (its status and time are on it); reported once."""

    process: Process


@dataclass(frozen=True)
class OutOfMemory:
    """The guest's OOM killer hit a container (at most once a second per container)."""

    container_id: str


@dataclass(frozen=True)
class PodDied:
    """The pod's VM died under it (QEMU or virtiofsd gone); every process got exit 255."""

    reason: str


PodEvent = ProcessExited | OutOfMemory | PodDied
Report = Callable[[PodEvent], None]
