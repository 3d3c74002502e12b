"""A pod's VM is the configured size plus the pod's limits (Kata's
static_sandbox_resource_mgmt), within the maxima; the limits are the spec's, so checked."""

import os

import pytest

from protos.kubernetes import cri_pod_pb2
from shim.pod import sizing
from shim.pod.pod import settings_from_spec
from shim.pod.sizing import PodLimits, VMSize, vm_size
from shim.spec_support import SpecError

GIB = 1 << 30
POD_2_CPUS_1_GIB = {
    "io.kubernetes.cri.container-type": "sandbox",
    "io.kubernetes.cri.sandbox-cpu-quota": "200000",
    "io.kubernetes.cri.sandbox-cpu-period": "100000",
    "io.kubernetes.cri.sandbox-cpu-shares": "2048",
    "io.kubernetes.cri.sandbox-memory": str(GIB),
}


def hypervisor(**keys):
    from shim.config import HypervisorConfig

    return HypervisorConfig(**{"default_vcpus": 1, "default_memory": 512,
                               "default_maxvcpus": 8, "default_maxmemory": 8192, **keys})


def test_a_pod_limited_to_2_cpus_and_1_gib_gets_them_on_top_of_the_defaults():
    limits = sizing.from_annotations(POD_2_CPUS_1_GIB)
    assert limits == PodLimits(200000, 100000, GIB) and limits.cpus == 2
    assert vm_size(hypervisor(), limits) == VMSize(vcpus=3, memory_mib=1536)


def test_a_part_cpu_rounds_up_and_no_limit_keeps_the_defaults():
    assert PodLimits(cpu_quota=50000, cpu_period=100000).cpus == 1
    unlimited = sizing.from_annotations({"io.kubernetes.cri.sandbox-cpu-quota": "0",
                                         "io.kubernetes.cri.sandbox-cpu-period": "100000",
                                         "io.kubernetes.cri.sandbox-memory": "0"})
    assert vm_size(hypervisor(), unlimited) == VMSize(1, 512)
    assert vm_size(hypervisor(), None) == VMSize(1, 512)
    assert sizing.from_annotations({"io.kubernetes.cri.container-type": "sandbox"}) is None


def test_the_maxima_bound_the_vm_and_static_off_keeps_the_defaults():
    huge = PodLimits(cpu_quota=64 * 100000, cpu_period=100000, memory_bytes=64 * GIB)
    assert vm_size(hypervisor(), huge) == VMSize(vcpus=8, memory_mib=8192)
    assert vm_size(hypervisor(), huge, static=False) == VMSize(1, 512)
    host = hypervisor(default_maxvcpus=0, default_maxmemory=0)
    assert vm_size(host, huge) == VMSize(*host.maxima())
    assert host.maxima()[0] == len(os.sched_getaffinity(0))


def test_the_containers_limits_add_up_at_one_period():
    assert sizing.total([PodLimits(50000, 100000, 1 << 20), PodLimits(),
                         PodLimits(30000, 20000, 2 << 20)]) == PodLimits(200000, 100000, 3 << 20)


@pytest.mark.parametrize("bad", ["lots", "1e9", "-5", str(1 << 63), True])
def test_a_limit_that_is_not_a_plain_integer_is_refused(bad):
    with pytest.raises(SpecError, match=r"io\.kubernetes\.cri\.sandbox-memory"):
        sizing.from_annotations({"io.kubernetes.cri.sandbox-memory": bad})


def test_a_lone_container_is_sized_by_its_own_limits(tmp_path, monkeypatch):
    config = tmp_path / "configuration.toml"
    config.write_text("[hypervisor.qemu]\ndefault_maxvcpus = 4\n")
    monkeypatch.setenv("PYKATA_CONF_FILE", str(config))
    spec = {"process": {}, "root": {}, "linux": {"resources": {
        "cpu": {"quota": 150000, "period": 100000}, "memory": {"limit": 256 << 20}}}}
    settings = settings_from_spec("ns", "c1", spec, ("", b""))
    assert settings.limits == PodLimits(150000, 100000, 256 << 20)
    assert settings.vm_size() == VMSize(vcpus=3, memory_mib=768)
    with pytest.raises(SpecError, match=r"cpu\.quota"):
        sizing.from_spec({"linux": {"resources": {"cpu": {"quota": "x"}}}})
    assert sizing.from_spec({"linux": {"resources": {"memory": {"limit": -1}}}}) == PodLimits()


def test_the_sandbox_apis_pod_resources_size_it():
    resources = cri_pod_pb2.LinuxContainerResources(cpu_period=100000, cpu_quota=200000,
                                                    memory_limit_in_bytes=GIB)
    assert sizing.from_cri(resources) == PodLimits(200000, 100000, GIB)
