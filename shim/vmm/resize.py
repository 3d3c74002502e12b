"""Growing a running VM: vCPUs by QMP device_add of the CPUs QEMU holds ready
(-smp N,maxcpus=M), memory by DIMMs (-m ...,slots=,maxmem=) that the guest onlines at
once (memhp_default_state=online). Shrinking is left out: a guest gives back neither
CPUs nor memory it may be using without its help."""

from __future__ import annotations

from typing import Any, Protocol

MEMORY_BLOCK_MIB = 128  # the x86-64 guest's memory block: a DIMM comes online whole


class ResizeError(Exception):
    """The VM cannot grow as asked; the message names the limit."""


class Qmp(Protocol):
    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any: ...


def dimm_mib(wanted_mib: int) -> int:
    """A DIMM of at least wanted_mib, whole memory blocks."""
    return -(-wanted_mib // MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB


async def add_cpus(qmp: Qmp, count: int) -> int:
    """Plug `count` of the CPUs QEMU holds ready; how many were plugged."""
    slots = await qmp.execute("query-hotpluggable-cpus")
    free = [slot for slot in slots if "qom-path" not in slot]
    if len(free) < count:
        raise ResizeError(f"{count} more vCPUs asked, {len(free)} left to plug (maxcpus)")
    for slot in free[:count]:
        props = dict(slot.get("props") or {})
        name = "vcpu-" + "-".join(str(props[key]) for key in sorted(props))
        await qmp.execute("device_add", {"driver": slot["type"], "id": name, **props})
    return count


async def add_memory(qmp: Qmp, index: int, size_mib: int) -> None:
    """Plug one DIMM of size_mib (whole blocks) as memory device `index`."""
    backend = f"hotmem{index}"
    # shared, as the boot memory: virtiofsd (vhost-user) maps every guest RAM region
    await qmp.execute("object-add", {"qom-type": "memory-backend-memfd", "id": backend,
                                     "size": size_mib << 20, "share": True})
    try:
        await qmp.execute("device_add", {"driver": "pc-dimm", "id": f"hotdimm{index}",
                                         "memdev": backend})
    except Exception:
        await qmp.execute("object-del", {"id": backend})
        raise
