"""The Task API's answers to bad requests, over ttrpc, before any VM is involved."""

import asyncio
import json

import pytest
from google.protobuf.any_pb2 import Any

import ttrpc
from protos.containerd.task.v2 import shim_pb2 as api
from shim.pod.pod import Pod
from shim.task_service.events import EventPublisher
from shim.task_service.service import TaskService

TASK = api.DESCRIPTOR.services_by_name["Task"]
MINIMAL_SPEC = {"process": {"args": ["true"]}, "root": {"path": "rootfs"}}
Code = ttrpc.Code


@pytest.fixture
async def task(tmp_path):
    shutdown = asyncio.Event()
    service = TaskService(Pod("pykata-test", lambda event: None),
                          EventPublisher("", "pykata-test"), shutdown)
    server = ttrpc.Server()
    server.register(TASK, service)
    await server.serve_unix(str(tmp_path / "task.sock"))
    client = await ttrpc.Client.connect(str(tmp_path / "task.sock"))
    yield ttrpc.Stub(client, TASK), shutdown
    await client.close()
    await server.shutdown()


async def code_of(call) -> tuple[Code, str]:
    with pytest.raises(ttrpc.TTRPCError) as caught:
        await call
    return caught.value.code, caught.value.message


async def test_checkpoint_is_unimplemented(task):
    stub, _ = task
    code, message = await code_of(stub.Checkpoint(api.CheckpointTaskRequest(id="c1")))
    assert (code, message) == (Code.UNIMPLEMENTED, "method Checkpoint")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.State(api.StateRequest(id="nope")),
        lambda s: s.Start(api.StartRequest(id="nope")),
        lambda s: s.Wait(api.WaitRequest(id="nope")),
        lambda s: s.Kill(api.KillRequest(id="nope", signal=9)),
        lambda s: s.Delete(api.DeleteRequest(id="nope")),
        lambda s: s.Pids(api.PidsRequest(id="nope")),
        lambda s: s.Pause(api.PauseRequest(id="nope")),
        lambda s: s.Stats(api.StatsRequest(id="nope")),
        lambda s: s.Exec(api.ExecProcessRequest(id="nope", exec_id="e1")),
    ],
)
async def test_unknown_container_is_not_found(task, call):
    stub, _ = task
    code, message = await code_of(call(stub))
    assert code == Code.NOT_FOUND
    assert "container nope not found" in message


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "", "x y"])
async def test_path_characters_are_invalid_argument(task, bad_id, tmp_path):
    stub, _ = task
    code, _ = await code_of(stub.State(api.StateRequest(id=bad_id)))
    assert code == Code.INVALID_ARGUMENT
    code, _ = await code_of(stub.Create(api.CreateTaskRequest(id=bad_id, bundle=str(tmp_path))))
    assert code == Code.INVALID_ARGUMENT


async def test_create_without_config_json_is_invalid_argument(task, tmp_path):
    stub, _ = task
    code, message = await code_of(stub.Create(api.CreateTaskRequest(id="c1", bundle=str(tmp_path))))
    assert code == Code.INVALID_ARGUMENT
    assert "config.json" in message


async def test_create_with_a_bad_config_file_names_it(task, tmp_path):
    stub, _ = task
    (tmp_path / "config.json").write_text(json.dumps(MINIMAL_SPEC))
    from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions

    options = Any(
        type_url="runtimeoptions.v1.Options",
        value=runtimeoptions.Options(
            config_path=str(tmp_path / "missing.toml")
        ).SerializeToString(),
    )
    code, message = await code_of(
        stub.Create(api.CreateTaskRequest(id="c1", bundle=str(tmp_path), options=options))
    )
    assert code == Code.INVALID_ARGUMENT
    assert "missing.toml does not exist" in message


async def test_create_reads_a_config_body_and_names_it_in_errors(task, tmp_path):
    """containerd 1.7+ CRI may send the TOML itself (config_body) instead of a path."""
    stub, _ = task
    (tmp_path / "config.json").write_text(json.dumps(MINIMAL_SPEC))
    from protos.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions

    options = Any(
        type_url="runtimeoptions.v1.Options",
        value=runtimeoptions.Options(
            config_body=b'[hypervisor.qemu]\nshared_fs = "nfs"\n'
        ).SerializeToString(),
    )
    code, message = await code_of(
        stub.Create(api.CreateTaskRequest(id="c1", bundle=str(tmp_path), options=options))
    )
    assert code == Code.INVALID_ARGUMENT
    assert "runtime option config_body" in message and "shared_fs = 'nfs'" in message


async def test_checkpoint_restore_is_refused(task, tmp_path):
    stub, _ = task
    code, _ = await code_of(
        stub.Create(api.CreateTaskRequest(id="c1", bundle=str(tmp_path), checkpoint="/x"))
    )
    assert code == Code.UNIMPLEMENTED


async def test_shutdown_with_no_containers_ends_the_daemon(task):
    stub, shutdown = task
    connect = await stub.Connect(api.ConnectRequest(id="c1"))
    assert connect.shim_pid > 0 and connect.version.startswith("pykata")
    await stub.Shutdown(api.ShutdownRequest(id="c1"))
    assert shutdown.is_set()


@pytest.mark.parametrize(("content", "words"), [
    (b"{not json", "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (json.dumps({"process": {"args": ["true"]}}).encode(), "has no 'root' object"),
    (json.dumps({"root": {"path": "rootfs"}}).encode(), "has no 'process' object"),
    (b'{"process": {}, "root": {}, "pad": "' + b"x" * (16 << 20) + b'"}', "larger than 2 MiB"),
])
async def test_a_bad_config_json_is_refused_before_any_vm(task, tmp_path, content, words):
    stub, _ = task
    (tmp_path / "config.json").write_bytes(content)
    code, message = await code_of(stub.Create(api.CreateTaskRequest(id="c1", bundle=str(tmp_path))))
    assert code == Code.INVALID_ARGUMENT
    assert words in message and "config.json" in message


@pytest.mark.parametrize("bad", ["a/b", "../etc", "a\0b", "x" * 300, ""])
async def test_ids_with_path_characters_are_refused(task, tmp_path, bad):
    stub, _ = task
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    code, message = await code_of(stub.Create(api.CreateTaskRequest(id=bad, bundle=str(bundle))))
    assert code == Code.INVALID_ARGUMENT
    assert "container id" in message
    assert not any(bundle.iterdir()), "nothing may be created for a refused id"
