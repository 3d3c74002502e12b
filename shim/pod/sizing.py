"""How big a pod's VM is: the configured defaults plus what the pod is limited to, as
Kata's `static_sandbox_resource_mgmt` sizes it.

The limits come from where each door has them: CRI's sandbox annotations on a pause
container (containerd 1.7+ copies kubelet's pod totals there), the Sandbox API's
PodSandboxConfig.linux.resources, or a lone container's own spec (`ctr run --cpus`,
`--memory-limit`). They are the pod spec's, so not trusted: each must be a plain
non-negative integer, and the VM never grows past `default_maxvcpus` /
`default_maxmemory` (0: the host's CPUs / memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shim.spec_support import SpecError

CPU_QUOTA_ANNOTATION = "io.kubernetes.cri.sandbox-cpu-quota"
CPU_PERIOD_ANNOTATION = "io.kubernetes.cri.sandbox-cpu-period"
MEMORY_ANNOTATION = "io.kubernetes.cri.sandbox-memory"
MIB = 1 << 20
MAX_VALUE = 1 << 62  # anything larger is no limit a pod could mean


@dataclass(frozen=True)
class PodLimits:
    """The pod's CPU quota per period (µs) and memory limit (bytes); 0: none."""

    cpu_quota: int = 0
    cpu_period: int = 0
    memory_bytes: int = 0

    @property
    def cpus(self) -> int:
        """Whole CPUs the quota amounts to, rounded up (Kata's rule)."""
        if self.cpu_quota <= 0 or self.cpu_period <= 0:
            return 0
        return -(-self.cpu_quota // self.cpu_period)

    @property
    def memory_mib(self) -> int:
        return -(-self.memory_bytes // MIB) if self.memory_bytes > 0 else 0


@dataclass(frozen=True)
class VMSize:
    vcpus: int
    memory_mib: int


def _integer(value: Any, what: str) -> int:
    """A non-negative integer from the spec; -1 (CRI's and OCI's "no limit") reads 0."""
    if isinstance(value, bool):
        raise SpecError(f"{what} must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SpecError(f"{what} must be an integer, not {str(value)[:40]!r}") from None
    if number < -1 or number > MAX_VALUE:
        raise SpecError(f"{what} is out of range: {number}")
    return max(number, 0)


def from_annotations(annotations: dict[str, Any]) -> PodLimits | None:
    """The pod totals containerd puts on a CRI sandbox container (None: none given)."""
    keys = (CPU_QUOTA_ANNOTATION, CPU_PERIOD_ANNOTATION, MEMORY_ANNOTATION)
    if not any(key in annotations for key in keys):
        return None
    quota, period, memory = (_integer(annotations.get(key) or 0, f"annotation {key}")
                             for key in keys)
    return PodLimits(quota, period, memory)


def from_spec(spec: dict[str, Any]) -> PodLimits:
    """A lone container's own limits (linux.resources of its OCI spec)."""
    resources = (spec.get("linux") or {}).get("resources") or {}
    if not isinstance(resources, dict):
        raise SpecError("linux.resources must be an object")
    cpu = resources.get("cpu") or {}
    memory = resources.get("memory") or {}
    if not isinstance(cpu, dict) or not isinstance(memory, dict):
        raise SpecError("linux.resources.cpu and .memory must be objects")
    return PodLimits(
        _integer(cpu.get("quota") or 0, "linux.resources.cpu.quota"),
        _integer(cpu.get("period") or 0, "linux.resources.cpu.period"),
        _integer(memory.get("limit") or 0, "linux.resources.memory.limit"),
    )


def from_cri(resources: Any) -> PodLimits:
    """CRI LinuxContainerResources (the Sandbox API's pod totals)."""
    return PodLimits(
        _integer(resources.cpu_quota, "resources.cpu_quota"),
        _integer(resources.cpu_period, "resources.cpu_period"),
        _integer(resources.memory_limit_in_bytes, "resources.memory_limit_in_bytes"),
    )


def vm_size(hypervisor: Any, limits: PodLimits | None, *, static: bool = True) -> VMSize:
    """The pod's VM: the defaults, plus the pod's limits when sized statically, within
    the maxima (HypervisorConfig.maxima: the configured, else the host's)."""
    vcpus, memory = hypervisor.default_vcpus, hypervisor.default_memory
    if static and limits is not None:
        vcpus += limits.cpus
        memory += limits.memory_mib
    max_vcpus, max_memory = hypervisor.maxima()
    return VMSize(vcpus=min(vcpus, max_vcpus), memory_mib=min(memory, max_memory))


def wanted(hypervisor: Any, limits: PodLimits) -> VMSize:
    """The defaults plus these limits, unbounded (what a resize asks for)."""
    return VMSize(hypervisor.default_vcpus + limits.cpus,
                  hypervisor.default_memory + limits.memory_mib)


def total(limits: list[PodLimits]) -> PodLimits:
    """The sum of the containers' limits, as CFS quota at a 100 ms period."""
    period = 100_000
    quota = sum(-(-item.cpu_quota * period // item.cpu_period)
                for item in limits if item.cpu_quota > 0 and item.cpu_period > 0)
    return PodLimits(quota, period, sum(item.memory_bytes for item in limits))
