"""The generated protobuf modules: fresh, importable, and wire-compatible.

The field numbers below were checked one by one against upstream: containerd
v1.6.20 (runtime/v2/task/shim.proto, api/events/task.proto,
api/services/ttrpc/events/v1/events.proto, api/types, pkg/runtimeoptions/v1;
config_body is from 1.7) and Kata's main branch src/libs/protocols/protos/.
A wrong number here means a peer (containerd, a stock Kata agent) would read
garbage, so these are the facts worth pinning.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2, descriptor_pool, empty_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor as FD

from protos.containerd.events import task_pb2 as events
from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions
from protos.containerd.services.events.ttrpc.v1 import events_pb2 as events_service
from protos.containerd.task.v2 import shim_pb2 as shim
from protos.containerd.types import mount_pb2 as mount
from protos.containerd.types.task import task_pb2 as task_types
from protos.kata import agent_pb2 as agent
from protos.kata import health_pb2 as health
from protos.kata import oci_pb2 as oci
from protos.kata import types_pb2 as kata_types

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generated_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts) for path in PROTOS.rglob("*_pb2.py")
    )


def test_generated_modules_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", generated_modules())
def test_module_imports_under_protos_package(name: str) -> None:
    module = importlib.import_module(name)
    # Registered under its repo-relative path, so it never clashes with
    # another file called types.proto or task.proto in the descriptor pool.
    assert module.DESCRIPTOR.name.startswith("protos/")
    for dependency in module.DESCRIPTOR.dependencies:
        assert dependency.name.startswith(("protos/", "google/protobuf/"))


def test_every_expected_module_exists() -> None:
    assert set(generated_modules()) >= {
        "protos.containerd.types.mount_pb2",
        "protos.containerd.types.task.task_pb2",
        "protos.containerd.task.v2.shim_pb2",
        "protos.containerd.events.task_pb2",
        "protos.containerd.services.events.ttrpc.v1.events_pb2",
        "protos.containerd.runtimeoptions.v1.api_pb2",
        "protos.containerd.types.introspection_pb2",
        "protos.kata.health_pb2",
        "protos.kata.types_pb2",
        "protos.kata.oci_pb2",
        "protos.kata.agent_pb2",
    }


def test_no_gogoproto() -> None:
    for source in PROTOS.rglob("*.proto"):
        assert "gogo" not in source.read_text(), source


# --- services -----------------------------------------------------------------

SERVICES = [
    (shim, "Task", "containerd.task.v2.Task"),
    (events_service, "Events", "containerd.services.events.ttrpc.v1.Events"),
    (agent, "AgentService", "grpc.AgentService"),
    (health, "Health", "grpc.Health"),
]


@pytest.mark.parametrize(("module", "name", "full_name"), SERVICES)
def test_service_full_names(module, name: str, full_name: str) -> None:
    assert module.DESCRIPTOR.services_by_name[name].full_name == full_name


EMPTY = "google.protobuf.Empty"
TASK_METHODS = {
    "State": ("StateRequest", "StateResponse"),
    "Create": ("CreateTaskRequest", "CreateTaskResponse"),
    "Start": ("StartRequest", "StartResponse"),
    "Delete": ("DeleteRequest", "DeleteResponse"),
    "Pids": ("PidsRequest", "PidsResponse"),
    "Pause": ("PauseRequest", EMPTY),
    "Resume": ("ResumeRequest", EMPTY),
    "Checkpoint": ("CheckpointTaskRequest", EMPTY),
    "Kill": ("KillRequest", EMPTY),
    "Exec": ("ExecProcessRequest", EMPTY),
    "ResizePty": ("ResizePtyRequest", EMPTY),
    "CloseIO": ("CloseIORequest", EMPTY),
    "Update": ("UpdateTaskRequest", EMPTY),
    "Wait": ("WaitRequest", "WaitResponse"),
    "Stats": ("StatsRequest", "StatsResponse"),
    "Connect": ("ConnectRequest", "ConnectResponse"),
    "Shutdown": ("ShutdownRequest", EMPTY),
}

AGENT_METHODS = {
    "CreateContainer": ("CreateContainerRequest", EMPTY),
    "StartContainer": ("StartContainerRequest", EMPTY),
    "RemoveContainer": ("RemoveContainerRequest", EMPTY),
    "ExecProcess": ("ExecProcessRequest", EMPTY),
    "SignalProcess": ("SignalProcessRequest", EMPTY),
    "WaitProcess": ("WaitProcessRequest", "WaitProcessResponse"),
    "UpdateContainer": ("UpdateContainerRequest", EMPTY),
    "StatsContainer": ("StatsContainerRequest", "StatsContainerResponse"),
    "PauseContainer": ("PauseContainerRequest", EMPTY),
    "ResumeContainer": ("ResumeContainerRequest", EMPTY),
    "WriteStdin": ("WriteStreamRequest", "WriteStreamResponse"),
    "ReadStdout": ("ReadStreamRequest", "ReadStreamResponse"),
    "ReadStderr": ("ReadStreamRequest", "ReadStreamResponse"),
    "CloseStdin": ("CloseStdinRequest", EMPTY),
    "TtyWinResize": ("TtyWinResizeRequest", EMPTY),
    "UpdateInterface": ("UpdateInterfaceRequest", "types.Interface"),
    "UpdateRoutes": ("UpdateRoutesRequest", "Routes"),
    "ListInterfaces": ("ListInterfacesRequest", "Interfaces"),
    "ListRoutes": ("ListRoutesRequest", "Routes"),
    "AddARPNeighbors": ("AddARPNeighborsRequest", EMPTY),
    "GetIPTables": ("GetIPTablesRequest", "GetIPTablesResponse"),
    "SetIPTables": ("SetIPTablesRequest", "SetIPTablesResponse"),
    "GetMetrics": ("GetMetricsRequest", "Metrics"),
    "GetOOMEvent": ("GetOOMEventRequest", "OOMEvent"),
    "CreateSandbox": ("CreateSandboxRequest", EMPTY),
    "DestroySandbox": ("DestroySandboxRequest", EMPTY),
    "GetGuestDetails": ("GuestDetailsRequest", "GuestDetailsResponse"),
    "SetGuestDateTime": ("SetGuestDateTimeRequest", EMPTY),
    "CopyFile": ("CopyFileRequest", EMPTY),
    "ReseedRandomDev": ("ReseedRandomDevRequest", EMPTY),
    "OnlineCPUMem": ("OnlineCPUMemRequest", EMPTY),
    "GetVolumeStats": ("VolumeStatsRequest", "VolumeStatsResponse"),
    "ResizeVolume": ("ResizeVolumeRequest", EMPTY),
}

HEALTH_METHODS = {
    "Check": ("CheckRequest", "HealthCheckResponse"),
    "Version": ("CheckRequest", "VersionCheckResponse"),
}


def qualify(package: str, name: str) -> str:
    return name if "." in name else f"{package}.{name}"


@pytest.mark.parametrize(
    ("module", "service", "package", "methods"),
    [
        (shim, "Task", "containerd.task.v2", TASK_METHODS),
        (agent, "AgentService", "grpc", AGENT_METHODS),
        (health, "Health", "grpc", HEALTH_METHODS),
    ],
)
def test_service_methods(module, service: str, package: str, methods: dict) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    found = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in descriptor.methods}
    expected = {
        name: (qualify(package, request), qualify(package, response))
        for name, (request, response) in methods.items()
    }
    assert found == expected
    for method in descriptor.methods:
        assert not method.client_streaming
        assert not method.server_streaming


def test_task_method_order_matches_upstream() -> None:
    methods = shim.DESCRIPTOR.services_by_name["Task"].methods
    assert [m.name for m in methods] == list(TASK_METHODS)


# --- fields ---------------------------------------------------------------------

# (message class, field name, number, wire type)
FIELDS = [
    # containerd.types / containerd.v1.types
    (mount.Mount, "type", 1, FD.TYPE_STRING),
    (mount.Mount, "options", 4, FD.TYPE_STRING),
    (task_types.ProcessInfo, "pid", 1, FD.TYPE_UINT32),
    (task_types.ProcessInfo, "info", 2, FD.TYPE_MESSAGE),
    # containerd.task.v2
    (shim.CreateTaskRequest, "rootfs", 3, FD.TYPE_MESSAGE),
    (shim.CreateTaskRequest, "terminal", 4, FD.TYPE_BOOL),
    (shim.CreateTaskRequest, "stdin", 5, FD.TYPE_STRING),
    (shim.CreateTaskRequest, "stderr", 7, FD.TYPE_STRING),
    (shim.CreateTaskRequest, "parent_checkpoint", 9, FD.TYPE_STRING),
    (shim.CreateTaskRequest, "options", 10, FD.TYPE_MESSAGE),
    (shim.DeleteResponse, "exit_status", 2, FD.TYPE_UINT32),
    (shim.DeleteResponse, "exited_at", 3, FD.TYPE_MESSAGE),
    (shim.ExecProcessRequest, "terminal", 3, FD.TYPE_BOOL),
    (shim.ExecProcessRequest, "spec", 7, FD.TYPE_MESSAGE),
    (shim.StateResponse, "status", 4, FD.TYPE_ENUM),
    (shim.StateResponse, "exited_at", 10, FD.TYPE_MESSAGE),
    (shim.StateResponse, "exec_id", 11, FD.TYPE_STRING),
    (shim.KillRequest, "signal", 3, FD.TYPE_UINT32),
    (shim.KillRequest, "all", 4, FD.TYPE_BOOL),
    (shim.CloseIORequest, "stdin", 3, FD.TYPE_BOOL),
    (shim.UpdateTaskRequest, "resources", 2, FD.TYPE_MESSAGE),
    (shim.UpdateTaskRequest, "annotations", 3, FD.TYPE_MESSAGE),
    (shim.WaitResponse, "exit_status", 1, FD.TYPE_UINT32),
    (shim.WaitResponse, "exited_at", 2, FD.TYPE_MESSAGE),
    (shim.ConnectResponse, "shim_pid", 1, FD.TYPE_UINT32),
    (shim.ConnectResponse, "task_pid", 2, FD.TYPE_UINT32),
    (shim.ConnectResponse, "version", 3, FD.TYPE_STRING),
    (shim.ShutdownRequest, "now", 2, FD.TYPE_BOOL),
    (shim.ResizePtyRequest, "height", 4, FD.TYPE_UINT32),
    # containerd.events
    (events.TaskCreate, "io", 4, FD.TYPE_MESSAGE),
    (events.TaskCreate, "pid", 6, FD.TYPE_UINT32),
    (events.TaskDelete, "exited_at", 4, FD.TYPE_MESSAGE),
    (events.TaskDelete, "id", 5, FD.TYPE_STRING),
    (events.TaskExit, "id", 2, FD.TYPE_STRING),
    (events.TaskExit, "pid", 3, FD.TYPE_UINT32),
    (events.TaskExit, "exit_status", 4, FD.TYPE_UINT32),
    (events.TaskExit, "exited_at", 5, FD.TYPE_MESSAGE),
    (events.TaskExecStarted, "pid", 3, FD.TYPE_UINT32),
    (events.TaskCheckpointed, "checkpoint", 2, FD.TYPE_STRING),
    # containerd.services.events.ttrpc.v1
    (events_service.ForwardRequest, "envelope", 1, FD.TYPE_MESSAGE),
    (events_service.Envelope, "timestamp", 1, FD.TYPE_MESSAGE),
    (events_service.Envelope, "namespace", 2, FD.TYPE_STRING),
    (events_service.Envelope, "topic", 3, FD.TYPE_STRING),
    (events_service.Envelope, "event", 4, FD.TYPE_MESSAGE),
    # runtimeoptions.v1
    (runtimeoptions.Options, "type_url", 1, FD.TYPE_STRING),
    (runtimeoptions.Options, "config_path", 2, FD.TYPE_STRING),
    (runtimeoptions.Options, "config_body", 3, FD.TYPE_BYTES),
    # grpc (health)
    (health.HealthCheckResponse, "status", 1, FD.TYPE_ENUM),
    (health.VersionCheckResponse, "agent_version", 2, FD.TYPE_STRING),
    # types
    (kata_types.IPAddress, "mask", 3, FD.TYPE_STRING),
    (kata_types.Interface, "IPAddresses", 3, FD.TYPE_MESSAGE),
    (kata_types.Interface, "mtu", 4, FD.TYPE_UINT64),
    (kata_types.Interface, "hwAddr", 5, FD.TYPE_STRING),
    (kata_types.Interface, "devicePath", 6, FD.TYPE_STRING),
    (kata_types.Interface, "raw_flags", 8, FD.TYPE_UINT32),
    (kata_types.Route, "scope", 5, FD.TYPE_UINT32),
    (kata_types.Route, "family", 6, FD.TYPE_ENUM),
    (kata_types.ARPNeighbor, "toIPAddress", 1, FD.TYPE_MESSAGE),
    (kata_types.ARPNeighbor, "state", 4, FD.TYPE_INT32),
    # grpc (oci)
    (oci.Spec, "Process", 2, FD.TYPE_MESSAGE),
    (oci.Spec, "Annotations", 7, FD.TYPE_MESSAGE),
    (oci.Spec, "Linux", 8, FD.TYPE_MESSAGE),
    (oci.Process, "OOMScoreAdj", 11, FD.TYPE_INT64),
    (oci.Mount, "destination", 1, FD.TYPE_STRING),
    (oci.Mount, "type", 3, FD.TYPE_STRING),
    (oci.Linux, "Namespaces", 6, FD.TYPE_MESSAGE),
    (oci.Linux, "IntelRdt", 13, FD.TYPE_MESSAGE),
    (oci.LinuxResources, "Network", 7, FD.TYPE_MESSAGE),
    (oci.LinuxMemory, "Swappiness", 6, FD.TYPE_UINT64),
    (oci.LinuxDevice, "FileMode", 5, FD.TYPE_UINT32),
    (oci.LinuxSyscall, "errnoret", 3, FD.TYPE_UINT32),
    (oci.LinuxSyscall, "Args", 4, FD.TYPE_MESSAGE),
    # grpc (agent)
    (agent.ExecProcessRequest, "container_id", 1, FD.TYPE_STRING),
    (agent.ExecProcessRequest, "exec_id", 2, FD.TYPE_STRING),
    (agent.ExecProcessRequest, "string_user", 3, FD.TYPE_MESSAGE),
    (agent.ExecProcessRequest, "process", 4, FD.TYPE_MESSAGE),
    (agent.ExecProcessRequest, "stdin_port", 5, FD.TYPE_UINT32),
    (agent.ExecProcessRequest, "stderr_port", 7, FD.TYPE_UINT32),
    (agent.CreateContainerRequest, "storages", 5, FD.TYPE_MESSAGE),
    (agent.CreateContainerRequest, "OCI", 6, FD.TYPE_MESSAGE),
    (agent.CreateContainerRequest, "sandbox_pidns", 7, FD.TYPE_BOOL),
    (agent.CreateContainerRequest, "stderr_port", 11, FD.TYPE_UINT32),
    (agent.RemoveContainerRequest, "timeout", 2, FD.TYPE_UINT32),
    (agent.WaitProcessResponse, "status", 1, FD.TYPE_INT32),
    (agent.ReadStreamRequest, "len", 3, FD.TYPE_UINT32),
    (agent.WriteStreamResponse, "len", 1, FD.TYPE_UINT32),
    (agent.TtyWinResizeRequest, "row", 3, FD.TYPE_UINT32),
    (agent.TtyWinResizeRequest, "column", 4, FD.TYPE_UINT32),
    (agent.Storage, "mount_point", 6, FD.TYPE_STRING),
    (agent.Storage, "fs_group", 7, FD.TYPE_MESSAGE),
    (agent.Storage, "shared", 8, FD.TYPE_BOOL),
    (agent.FSGroup, "group_id", 2, FD.TYPE_UINT32),
    (agent.Device, "container_path", 4, FD.TYPE_STRING),
    (agent.StringUser, "additionalGids", 3, FD.TYPE_STRING),
    (agent.CreateSandboxRequest, "sandbox_id", 5, FD.TYPE_STRING),
    (agent.CreateSandboxRequest, "kernel_modules", 7, FD.TYPE_MESSAGE),
    (agent.MemoryStats, "stats", 6, FD.TYPE_MESSAGE),
    (agent.CgroupStats, "hugetlb_stats", 5, FD.TYPE_MESSAGE),
    (agent.NetworkStats, "tx_dropped", 9, FD.TYPE_UINT64),
    (agent.GuestDetailsResponse, "agent_details", 2, FD.TYPE_MESSAGE),
    (agent.AgentDetails, "extra_features", 6, FD.TYPE_STRING),
    (agent.SetGuestDateTimeRequest, "Sec", 1, FD.TYPE_INT64),
    (agent.SetGuestDateTimeRequest, "Usec", 2, FD.TYPE_INT64),
    (agent.CopyFileRequest, "uid", 5, FD.TYPE_INT32),
    (agent.CopyFileRequest, "data", 8, FD.TYPE_BYTES),
    (agent.Interfaces, "Interfaces", 1, FD.TYPE_MESSAGE),
    (agent.ARPNeighbors, "ARPNeighbors", 1, FD.TYPE_MESSAGE),
    (agent.GetIPTablesRequest, "is_ipv6", 1, FD.TYPE_BOOL),
    (agent.GetIPTablesResponse, "data", 1, FD.TYPE_BYTES),
    (agent.SetIPTablesRequest, "is_ipv6", 1, FD.TYPE_BOOL),
    (agent.SetIPTablesRequest, "data", 2, FD.TYPE_BYTES),
    (agent.SetIPTablesResponse, "data", 1, FD.TYPE_BYTES),
    (agent.ReseedRandomDevRequest, "data", 2, FD.TYPE_BYTES),
    (agent.OnlineCPUMemRequest, "wait", 1, FD.TYPE_BOOL),
    (agent.OnlineCPUMemRequest, "nb_cpus", 2, FD.TYPE_UINT32),
    (agent.OnlineCPUMemRequest, "cpu_only", 3, FD.TYPE_BOOL),
    (agent.VolumeStatsRequest, "volume_guest_path", 1, FD.TYPE_STRING),
    (agent.ResizeVolumeRequest, "volume_guest_path", 1, FD.TYPE_STRING),
    (agent.ResizeVolumeRequest, "size", 2, FD.TYPE_UINT64),
    (agent.VolumeStatsResponse, "usage", 1, FD.TYPE_MESSAGE),
    (agent.VolumeStatsResponse, "volume_condition", 2, FD.TYPE_MESSAGE),
    (agent.VolumeUsage, "available", 1, FD.TYPE_UINT64),
    (agent.VolumeUsage, "total", 2, FD.TYPE_UINT64),
    (agent.VolumeUsage, "used", 3, FD.TYPE_UINT64),
    (agent.VolumeUsage, "unit", 4, FD.TYPE_ENUM),
    (agent.VolumeCondition, "abnormal", 1, FD.TYPE_BOOL),
    (agent.VolumeCondition, "message", 2, FD.TYPE_STRING),
]


@pytest.mark.parametrize(
    ("message", "field", "number", "wire_type"),
    FIELDS,
    ids=[f"{m.DESCRIPTOR.full_name}.{f}" for m, f, _, _ in FIELDS],
)
def test_field_number_and_type(message, field: str, number: int, wire_type: int) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    assert descriptor.number == number
    assert descriptor.type == wire_type


# (message class, field name, full name of the message or enum it holds)
FIELD_TYPES = [
    (shim.CreateTaskRequest, "rootfs", "containerd.types.Mount"),
    (shim.CreateTaskRequest, "options", "google.protobuf.Any"),
    (shim.WaitResponse, "exited_at", "google.protobuf.Timestamp"),
    (shim.StateResponse, "status", "containerd.v1.types.Status"),
    (shim.PidsResponse, "processes", "containerd.v1.types.ProcessInfo"),
    (events.TaskCreate, "io", "containerd.events.TaskIO"),
    (events_service.Envelope, "event", "google.protobuf.Any"),
    (agent.CreateContainerRequest, "OCI", "grpc.Spec"),
    (agent.ExecProcessRequest, "process", "grpc.Process"),
    (agent.UpdateContainerRequest, "resources", "grpc.LinuxResources"),
    (agent.UpdateInterfaceRequest, "interface", "types.Interface"),
    (agent.FSGroup, "group_change_policy", "types.FSGroupChangePolicy"),
    (kata_types.Route, "family", "types.IPFamily"),
]


@pytest.mark.parametrize(("message", "field", "held"), FIELD_TYPES)
def test_field_holds(message, field: str, held: str) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    target = descriptor.message_type or descriptor.enum_type
    assert target.full_name == held


def test_repeated_and_map_fields() -> None:
    assert shim.CreateTaskRequest.DESCRIPTOR.fields_by_name["rootfs"].is_repeated
    assert kata_types.Interface.DESCRIPTOR.fields_by_name["IPAddresses"].is_repeated
    annotations = shim.UpdateTaskRequest.DESCRIPTOR.fields_by_name["annotations"]
    assert annotations.message_type.GetOptions().map_entry
    assert oci.Spec.DESCRIPTOR.fields_by_name["Annotations"].message_type.GetOptions().map_entry


def test_seccomp_errno_is_a_oneof() -> None:
    field = oci.LinuxSyscall.DESCRIPTOR.fields_by_name["errnoret"]
    assert field.containing_oneof is not None
    assert field.containing_oneof.name == "ErrnoRet"
    syscall = oci.LinuxSyscall(errnoret=0)
    assert syscall.WhichOneof("ErrnoRet") == "errnoret"


ENUMS = [
    (
        task_types.Status,
        {"UNKNOWN": 0, "CREATED": 1, "RUNNING": 2, "STOPPED": 3, "PAUSED": 4, "PAUSING": 5},
    ),
    (health.HealthCheckResponse.ServingStatus, {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2}),
    (kata_types.IPFamily, {"v4": 0, "v6": 1}),
    (kata_types.FSGroupChangePolicy, {"Always": 0, "OnRootMismatch": 1}),
    (agent.VolumeUsage.Unit, {"UNKNOWN": 0, "BYTES": 1, "INODES": 2}),
]


@pytest.mark.parametrize(("enum", "values"), ENUMS, ids=lambda x: getattr(x, "name", ""))
def test_enum_values(enum, values: dict[str, int]) -> None:
    assert {v.name: v.number for v in enum.DESCRIPTOR.values} == values


def test_full_names_are_upstream_packages() -> None:
    assert mount.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    assert task_types.Status.DESCRIPTOR.full_name == "containerd.v1.types.Status"
    assert events.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"
    assert runtimeoptions.Options.DESCRIPTOR.full_name == "runtimeoptions.v1.Options"
    assert kata_types.Interface.DESCRIPTOR.full_name == "types.Interface"
    assert oci.Spec.DESCRIPTOR.full_name == "grpc.Spec"
    assert agent.CreateContainerRequest.DESCRIPTOR.full_name == "grpc.CreateContainerRequest"


# --- wire -----------------------------------------------------------------------


def test_task_exit_forward_round_trip() -> None:
    exited_at = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123)
    exit_event = events.TaskExit(
        container_id="c1", id="c1", pid=42, exit_status=137, exited_at=exited_at
    )
    # containerd names the event type by its bare full name, no URL prefix.
    packed = any_pb2.Any(
        type_url=events.TaskExit.DESCRIPTOR.full_name, value=exit_event.SerializeToString()
    )
    assert packed.type_url == "containerd.events.TaskExit"
    request = events_service.ForwardRequest(
        envelope=events_service.Envelope(
            timestamp=exited_at, namespace="k8s.io", topic="/tasks/exit", event=packed
        )
    )
    wire = request.SerializeToString()

    parsed = events_service.ForwardRequest.FromString(wire)
    assert parsed.envelope.namespace == "k8s.io"
    assert parsed.envelope.topic == "/tasks/exit"
    assert parsed.envelope.timestamp == exited_at
    assert parsed.envelope.event.type_url == "containerd.events.TaskExit"
    # Any.Is()/Unpack() of the upb runtime want a "prefix/" in type_url and
    # say no to containerd's bare names: look the type up by name instead.
    descriptor = descriptor_pool.Default().FindMessageTypeByName(parsed.envelope.event.type_url)
    unpacked = message_factory.GetMessageClass(descriptor).FromString(parsed.envelope.event.value)
    assert isinstance(unpacked, events.TaskExit)
    assert unpacked == exit_event
    assert unpacked.exit_status == 137


def test_known_bytes() -> None:
    # Field 4 (exit_status), varint: tag 0x20; field 5 (exited_at), length
    # delimited: tag 0x2a. Catches a renumbering the descriptor checks miss.
    wire = events.TaskExit(exit_status=1, exited_at=timestamp_pb2.Timestamp(seconds=1))
    assert wire.SerializeToString() == bytes([0x20, 0x01, 0x2A, 0x02, 0x08, 0x01])
    # Kata's ExecProcessRequest: container_id is field 1, process field 4.
    request = agent.ExecProcessRequest(container_id="a", process=oci.Process(Terminal=True))
    assert request.SerializeToString() == b"\x0a\x01a\x22\x02\x08\x01"


def test_empty_is_the_well_known_empty() -> None:
    method = shim.DESCRIPTOR.services_by_name["Task"].methods_by_name["Kill"]
    assert method.output_type is empty_pb2.Empty.DESCRIPTOR
