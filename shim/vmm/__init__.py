"""The vmm layer: "get me a running VM with an agent" behind one function.

The sandbox does not care whether the VM was booted, restored from a template or
taken from a cache: it calls `start_vm` and gets a `RunningVM`. The template decision
(shim.vmm.factory) sits above the launcher (shim.vmm.vm). Imports are lazy
so that the shim's `start`/`delete` subcommands stay cheap; `kill_from_state`
(crash cleanup from a separate process) needs only the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shim.vmm.errors import (
        AgentTimeoutError,
        QemuExitedError,
        VirtiofsdError,
        VMError,
        VMStartError,
    )
    from shim.vmm.vm import RunningVM
    from shim.vmm.vm_config import NicSpec, VMConfig

__all__ = [
    "AgentTimeoutError",
    "NicSpec",
    "QemuExitedError",
    "RunningVM",
    "VMConfig",
    "VMError",
    "VMStartError",
    "VirtiofsdError",
    "kill_from_state",
    "start_vm",
]

_LAZY = {
    "VMConfig": "shim.vmm.vm_config",
    "NicSpec": "shim.vmm.vm_config",
    "VMError": "shim.vmm.errors",
    "VMStartError": "shim.vmm.errors",
    "QemuExitedError": "shim.vmm.errors",
    "AgentTimeoutError": "shim.vmm.errors",
    "VirtiofsdError": "shim.vmm.errors",
    "RunningVM": "shim.vmm.vm",
}


async def start_vm(config: VMConfig, state_dir: Path, shared_dir: Path, **kwargs: Any) -> RunningVM:
    """Start a VM (QEMU + virtiofsd) and return it once its agent answers Health/Check:
    restored from the template at config.template_path when one fits, else booted.

    Keyword options: `timeout` (default config.agent_timeout), `cache_dir` (host
    probe cache, default shim.paths.STATE_ROOT). Raises VMStartError after tearing down
    whatever it had started.
    """
    from shim.vmm.factory import start_vm as _start_vm

    return await _start_vm(config, state_dir, shared_dir, **kwargs)


def kill_from_state(state_dir: Path | str, grace: float = 2.0) -> list[str]:
    """Crash cleanup from another process: kill the recorded QEMU/virtiofsd (if their
    start times still match; SIGTERM, SIGKILL after `grace` s), remove sockets, pid
    files and vm.json. Idempotent; returns one line per action."""
    from shim.vmm.vm_record import kill_from_state as _kill

    return _kill(state_dir, grace)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'shim.vmm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
