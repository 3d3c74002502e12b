"""One sandbox's /metrics page: host processes, RPC histograms, overhead, the guest's text.

Labels go on every sample, as kata-monitor puts them: `sandbox_id`, and under
CRI `cri_uid`, `cri_name`, `cri_namespace`; the guest's text may not set them (see
shim.monitor.guest_page). The page is built in a worker thread (about 1.5 ms for the
host part, 10 ms with a full guest page here), so neither a slow /proc read nor the
rendering holds the Task API's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from pykata_common.exposition import render_bytes, with_labels
from shim.monitor.guest_page import agent_families
from shim.monitor.overhead import PodOverhead
from shim.monitor.procfs import families_for
from shim.monitor.rpc_metrics import RpcMetrics

__all__ = ["agent_families", "metrics_page", "sandbox_labels"]

Process = tuple[str, int | None, int | None]  # (family prefix, pid, start time in ticks)


def sandbox_labels(
    sandbox_id: str,
    *,
    cri_uid: str | None = None,
    cri_name: str | None = None,
    cri_namespace: str | None = None,
) -> dict[str, str]:
    """kata-monitor's labels for one sandbox (the CRI ones only when known)."""
    labels = {"sandbox_id": sandbox_id}
    for name, value in (
        ("cri_uid", cri_uid),
        ("cri_name", cri_name),
        ("cri_namespace", cri_namespace),
    ):
        if value:
            labels[name] = value
    return labels


async def metrics_page(
    processes: Sequence[Process],
    *,
    labels: Mapping[str, str],
    rpc: RpcMetrics | None = None,
    overhead: PodOverhead | None = None,
    guest_cpu_ns: int = 0,
    guest_memory_bytes: int = 0,
    agent_text: str | None = None,
) -> bytes:
    """The page body (render with exposition.CONTENT_TYPE).

    `processes`: the shim, QEMU and virtiofsd as ("kata_shim", pid, start), ...;
    `overhead` is sampled over their pids with the guest figures given;
    `agent_text` is the agent's GetMetrics answer (None when it gave none).
    """

    rpc_families = rpc.families() if rpc is not None else []  # on the loop: it owns them

    def build() -> bytes:
        families = families_for(processes)
        if overhead is not None:
            pids = [pid for _, pid, _ in processes if pid is not None]
            overhead.sample(pids, guest_cpu_ns=guest_cpu_ns, guest_memory_bytes=guest_memory_bytes)
            families.extend(overhead.families())
        families.extend(rpc_families)
        if agent_text:
            families.extend(agent_families(agent_text))
        return render_bytes(with_labels(families, labels))

    return await asyncio.to_thread(build)
