"""Growing a VM over QMP: the CPUs QEMU holds ready, then a DIMM of whole memory blocks."""

import asyncio

import pytest

from shim.vmm import resize


class FakeQmp:
    def __init__(self, free: int) -> None:
        self.sent: list[tuple[str, dict | None]] = []
        self.slots = [{"type": "qemu64-x86_64-cpu", "vcpus-count": 1, "qom-path": "/cpu0",
                       "props": {"socket-id": 0, "core-id": 0, "thread-id": 0}}]
        self.slots += [{"type": "qemu64-x86_64-cpu", "vcpus-count": 1,
                        "props": {"socket-id": i, "core-id": 0, "thread-id": 0}}
                       for i in range(1, 1 + free)]

    async def execute(self, command, arguments=None, timeout=10.0):
        self.sent.append((command, arguments))
        return self.slots if command == "query-hotpluggable-cpus" else {}


def test_cpus_are_plugged_into_free_slots_and_memory_as_whole_blocks():
    qmp = FakeQmp(free=2)
    assert asyncio.run(resize.add_cpus(qmp, 2)) == 2
    added = [args for command, args in qmp.sent if command == "device_add"]
    assert [a["socket-id"] for a in added] == [1, 2]
    assert added[0]["driver"] == "qemu64-x86_64-cpu" and added[0]["id"] == "vcpu-0-1-0"
    assert resize.dimm_mib(500) == 512 and resize.dimm_mib(512) == 512
    asyncio.run(resize.add_memory(qmp, 0, 512))
    assert qmp.sent[-2:] == [
        ("object-add", {"qom-type": "memory-backend-memfd", "id": "hotmem0",
                        "size": 512 << 20, "share": True}),
        ("device_add", {"driver": "pc-dimm", "id": "hotdimm0", "memdev": "hotmem0"}),
    ]


def test_more_cpus_than_qemu_holds_ready_is_refused_before_any_plug():
    qmp = FakeQmp(free=1)
    with pytest.raises(resize.ResizeError, match="2 more vCPUs asked, 1 left"):
        asyncio.run(resize.add_cpus(qmp, 2))
    assert [command for command, _ in qmp.sent] == ["query-hotpluggable-cpus"]
