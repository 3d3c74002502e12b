"""On-disk record of a VM's processes, and the crash cleanup that reads it.

Stdlib only: a separate `containerd-shim-pykata-v2 delete` process calls
`kill_from_state` after the shim daemon died, so this must import fast.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.paths import write_atomic
from shim.vmm import procs
from shim.vmm.layout import VMPaths

FORMAT = 1
# kill order: QEMU first (it holds the vhost-user sockets), then its helpers
KILL_ORDER = ("qemu", "virtiofsd", "vhost-vsock")


@dataclass
class ProcRecord:
    """A process we started: pid plus its /proc start time (recycled-pid guard)."""

    pid: int
    start_time: int | None
    argv0: str = ""


@dataclass
class VMRecord:
    """What vm.json holds."""

    processes: dict[str, ProcRecord] = field(default_factory=dict)
    agent: dict[str, object] = field(default_factory=dict)
    format: int = FORMAT


class StateWriter:
    """Keeps vm.json and the pid files in step with what has been started."""

    def __init__(self, paths: VMPaths) -> None:
        self.paths = paths
        self.record = VMRecord()

    def add_process(self, name: str, pid: int, argv0: str = "") -> ProcRecord:
        rec = ProcRecord(pid=pid, start_time=procs.start_time(pid), argv0=argv0)
        self.record.processes[name] = rec
        write_atomic(self.paths.state_dir / f"{name}.pid", f"{pid}\n")
        self.save()
        return rec

    def set_agent(self, **info: object) -> None:
        self.record.agent = dict(info)
        self.save()

    def save(self) -> None:
        data = {
            "format": self.record.format,
            "agent": self.record.agent,
            "processes": {k: asdict(v) for k, v in self.record.processes.items()},
        }
        write_atomic(self.paths.vm_json, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_record(state_dir: Path) -> VMRecord | None:
    """vm.json of a state dir, or None if absent or unreadable."""
    try:
        data = json.loads(VMPaths(state_dir).vm_json.read_text())
        processes = {k: ProcRecord(**v) for k, v in data.get("processes", {}).items()}
    except (OSError, ValueError, TypeError):
        return None
    return VMRecord(
        processes=processes, agent=data.get("agent", {}), format=data.get("format", FORMAT)
    )


def _names_dir(pid: int, state_dir: Path) -> bool:
    """Whether the process's argv mentions `state_dir` (ownership without a start time)."""
    return any(str(state_dir) in arg for arg in procs.cmdline(pid))


def _from_pidfiles(paths: VMPaths) -> dict[str, ProcRecord]:
    """Processes named only by pid files (no vm.json): trusted only if their argv
    names this state dir, since there is no start time to compare."""
    found: dict[str, ProcRecord] = {}
    for name in KILL_ORDER:
        try:
            pid = int((paths.state_dir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _names_dir(pid, paths.state_dir):
            found[name] = ProcRecord(pid=pid, start_time=procs.start_time(pid))
    return found


def kill_from_state(state_dir: Path | str, grace: float = 2.0) -> list[str]:
    """Kill the VM processes recorded in `state_dir`, remove its sockets and records.

    Never signals a process whose start time differs from the recorded one (a
    recycled pid). Idempotent: a second call finds nothing and returns [].
    Returns one line per action, for the caller to log.
    """
    paths = VMPaths(Path(state_dir))
    done: list[str] = []
    record = load_record(paths.state_dir)
    processes = record.processes if record else _from_pidfiles(paths)
    names = [n for n in KILL_ORDER if n in processes] + [
        n for n in processes if n not in KILL_ORDER
    ]
    for name in names:
        rec = processes[name]
        if rec.start_time is None and not _names_dir(rec.pid, paths.state_dir):
            continue  # no start time recorded and argv is not ours: not provably ours
        if procs.is_running(rec.pid, rec.start_time):
            outcome = procs.terminate(rec.pid, rec.start_time, grace)
            done.append(f"{name} pid {rec.pid}: {outcome}")
        elif procs.state(rec.pid) not in (None, "Z", "X"):
            done.append(
                f"{name} pid {rec.pid}: is another process now "
                f"(start time {procs.start_time(rec.pid)} != {rec.start_time}), left alone"
            )
    leftovers = [
        *paths.sockets(),
        paths.qemu_pidfile,
        paths.virtiofsd_pidfile,
        paths.virtiofsd_own_pidfile,
    ]
    leftovers += [paths.state_dir / f"{n}.pid" for n in processes]
    for path in dict.fromkeys([*leftovers, paths.vm_json]):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            done.append(f"removed {path.name}")
    return done
