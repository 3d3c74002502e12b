"""<state_dir>/network.json: what we added to the pod netns, written before each change.

Write-ahead: an entry is saved before the device, qdisc or filter is made, so a
shim killed half-way still leaves a record of everything it may have added, and
`containerd-shim-pykata-v2 delete` can undo exactly that. Stdlib only (read by
the delete path, which must stay cheap).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.paths import write_atomic

STATE_FILE = "network.json"
FORMAT = 1


def netns_id(path: str) -> str:
    """The identity of a netns file (device:inode): a reused path is not our netns."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@dataclass
class Journal:
    """The record of one sandbox's network changes."""

    path: Path
    netns: str
    netns_id: str
    marker: str
    model: str = "tcfilter"
    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, state_dir: Path, netns: str, marker: str, model: str) -> Journal:
        journal = cls(Path(state_dir) / STATE_FILE, netns, netns_id(netns), marker, model)
        journal.save()
        return journal

    @classmethod
    def load(cls, state_dir: Path | str) -> Journal | None:
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                path=path,
                netns=data["netns"],
                netns_id=data["netns_id"],
                marker=data["marker"],
                model=data.get("model", "tcfilter"),
                entries=list(data.get("entries", [])),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def add(self, **entry: Any) -> dict[str, Any]:
        """Record a change about to be made (done=False); returns the entry to update."""
        entry.setdefault("done", False)
        self.entries.append(entry)
        self.save()
        return entry

    def done(self, entry: dict[str, Any], **updates: Any) -> None:
        """Mark a recorded change as made, with what became known (e.g. an ifindex)."""
        entry.update(updates, done=True)
        self.save()

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "netns": self.netns,
            "netns_id": self.netns_id,
            "marker": self.marker,
            "model": self.model,
            "entries": self.entries,
        }
        write_atomic(self.path, json.dumps(data, indent=1) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
