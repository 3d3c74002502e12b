"""A Task Update that asks for more than the pod's VM has grows the VM first (hot-plug),
then raises the container's cgroup; more than the VM may grow to is refused, and the
VM keeps its size."""

import json

from google.protobuf.any_pb2 import Any
from scripted_agent import scripted_service

import ttrpc
from protos.containerd.task.v2 import shim_pb2 as api
from shim.config import parse_config

MIB = 1 << 20


def update(cpus: float, memory_mib: int) -> api.UpdateTaskRequest:
    resources = {"cpu": {"quota": int(cpus * 100000), "period": 100000},
                 "memory": {"limit": memory_mib * MIB}}
    return api.UpdateTaskRequest(id="c1", resources=Any(value=json.dumps(resources).encode()))


def resizable(max_vcpus: int = 4, max_memory: int = 4096):
    tasks, agent, _ = scripted_service()
    sandbox = tasks.pod.sandbox
    sandbox.config = parse_config(
        f"[hypervisor.qemu]\ndefault_maxvcpus = {max_vcpus}\ndefault_maxmemory = {max_memory}\n"
    )
    grown = []

    async def grow(vcpus, memory_mib):
        grown.append((vcpus, memory_mib))
        agent.calls.append("(grow)")
        sandbox.vm.vcpus, sandbox.vm.memory_mib = vcpus, memory_mib

    sandbox.grow = grow
    return tasks, agent, grown


async def test_a_larger_limit_grows_the_vm_before_the_cgroup():
    tasks, agent, grown = resizable()
    await tasks.Update(update(cpus=2, memory_mib=512), None)
    assert grown == [(3, 1024)]  # the defaults (1 vCPU, 512 MiB) + the pod's limits
    assert agent.calls[-2:] == ["(grow)", "UpdateContainer"]
    await tasks.Update(update(cpus=1, memory_mib=256), None)  # smaller: the VM stays
    assert grown == [(3, 1024)] and agent.calls[-1] == "UpdateContainer"


async def test_more_than_the_vm_may_grow_to_is_refused_and_changes_nothing():
    tasks, agent, grown = resizable(max_vcpus=2, max_memory=1024)
    try:
        await tasks.Update(update(cpus=3, memory_mib=256), None)
    except ttrpc.TTRPCError as exc:
        assert exc.code == ttrpc.Code.RESOURCE_EXHAUSTED
        assert "4 vCPUs" in exc.message and "default_maxvcpus" in exc.message
    else:
        raise AssertionError("the update was taken")
    assert grown == [] and "UpdateContainer" not in agent.calls
    assert tasks.pod.containers["c1"].limits.cpus == 0  # the container's limits stay
