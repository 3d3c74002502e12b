"""On-disk record of a sandbox, so a separate `delete` process can clean up after a crash."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.paths import SANDBOX_FILE, write_atomic

STATE_FILE = SANDBOX_FILE


@dataclass
class ContainerRecord:
    """What was set up on the host for one container."""

    bundle: str
    rootfs_mounted: bool = False


@dataclass
class SandboxRecord:
    """What was set up on the host for one sandbox (its VM and its containers)."""

    namespace: str
    sandbox_id: str
    shim_pid: int
    shim_started: int = 0  # the shim's /proc start time: a recycled pid is not the shim
    containers: dict[str, ContainerRecord] = field(default_factory=dict)

    def save(self, state_dir: Path) -> None:
        """Write atomically (a crash never leaves half a file)."""
        write_atomic(state_dir / STATE_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> SandboxRecord | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        containers = {
            cid: ContainerRecord(**record) for cid, record in data.get("containers", {}).items()
        }
        return cls(
            namespace=data["namespace"],
            sandbox_id=data["sandbox_id"],
            shim_pid=int(data.get("shim_pid", 0)),
            shim_started=int(data.get("shim_started", 0)),
            containers=containers,
        )
