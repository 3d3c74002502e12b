"""Pod networking: the pod netns scanned, a tap (or macvtap) per interface wired to it
with tc redirect, the guest told its interfaces and routes, all undone at the end.

Layers: model (data), plan (pure: scan -> devices, filters, QEMU NICs), guest (pure:
what the agent is told), nsenter/scan/apply/undo (pyroute2, imported lazily), journal
(network.json, so `delete` can undo after a crash), pod (the sandbox's entry points).
Importing this package costs nothing: `delete` calls `teardown_state`, which imports
pyroute2 only when network.json records something to undo.
"""

from __future__ import annotations

from pathlib import Path


def teardown_state(state_dir: Path | str) -> list[str]:
    """Undo the network changes recorded in `state_dir`; one line per action."""
    from shim.netns.undo import teardown_state as _teardown

    return _teardown(state_dir)


async def teardown(state_dir: Path | str) -> list[str]:
    """teardown_state in a thread of its own (it enters the pod netns)."""
    from shim.netns.nsenter import in_own_thread

    return await in_own_thread(teardown_state, state_dir)
