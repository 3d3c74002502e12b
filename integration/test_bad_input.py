"""Bad input sent to a live pykata shim: each call gets a precise gRPC code and a message
that says what to fix, the daemon keeps serving the container it runs, nothing leaks.

One container runs in a VM; the test then talks ttrpc to its shim's socket as
containerd would (Create of more containers into the same pod, with broken
bundles) and as a hostile peer would (10,000 random and truncated frames from
several connections at once). Afterwards an exec in the first container still
answers and, once it is removed, nothing of pykata is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import threading
import uuid
from pathlib import Path

import pytest

import ttrpc
from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)
from protos.containerd.task.v2 import shim_pb2 as api
from protos.containerd.types import mount_pb2
from shim.mountinfo import mounted_under
from ttrpc.framing import TYPE_REQUEST, TYPE_RESPONSE, encode_frame, encode_header
from ttrpc.pb.request_pb2 import Request

pytestmark = pytest.mark.integration
TASK = api.DESCRIPTOR.services_by_name["Task"]
TASK_SERVICE = "containerd.task.v2.Task"
Code = ttrpc.Code
HOSTILE_FRAMES = 10_000
HOSTILE_CONNECTIONS = 4


@pytest.fixture(scope="module")
def running(containerd, busybox_image, tmp_path_factory):
    """A container in a VM (sleeping) and its shim's socket path."""
    ensure_shim_on_path()
    ensure_guest_assets()
    cd = containerd
    cid = f"pk-bad-{uuid.uuid4().hex[:8]}"
    result = cd.ctr("run", "-d", "--runtime", RUNTIME, busybox_image, cid, "sleep", "600",
                    timeout=240)
    assert result.returncode == 0, result.stderr
    bundle = cd.state / "io.containerd.runtime.v2.task" / cd.namespace / cid
    address = (bundle / "address").read_text().strip().removeprefix("unix://")
    yield cd, cid, address, tmp_path_factory.mktemp("bundles")
    cd.ctr("task", "kill", "-s", "KILL", cid)
    cd.ctr("task", "rm", "-f", cid, timeout=60)
    cd.ctr("container", "rm", cid)
    assert_nothing_left()


def call(address: str, method: str, request):
    async def go():
        client = await ttrpc.Client.connect(address)
        try:
            return await getattr(ttrpc.Stub(client, TASK), method)(request, timeout=120)
        finally:
            await client.close()

    return asyncio.run(go())


def error_of(address: str, method: str, request) -> tuple[Code, str]:
    with pytest.raises(ttrpc.TTRPCError) as caught:
        call(address, method, request)
    return caught.value.code, caught.value.message


def bundle_with(base: Path, spec: dict | bytes) -> Path:
    bundle = base / uuid.uuid4().hex[:8]
    (bundle / "rootfs").mkdir(parents=True)
    body = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    (bundle / "config.json").write_bytes(body)
    return bundle


def spec(**extra) -> dict:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        **extra,
    }


def exec_answers(cd, cid: str) -> None:
    result = cd.ctr("task", "exec", "--exec-id", uuid.uuid4().hex[:8], cid, "echo", "still here",
                    timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "still here"), result.stderr


def test_a_rootfs_that_cannot_be_mounted_is_named_and_undone(running):
    cd, cid, address, base = running
    bundle = bundle_with(base, spec())
    broken = mount_pb2.Mount(type="overlay", source="overlay",
                             options=["lowerdir=/nonexistent/lower"])
    code, message = error_of(address, "Create", api.CreateTaskRequest(
        id="broken-rootfs", bundle=str(bundle), rootfs=[broken]))
    assert code == Code.INVALID_ARGUMENT
    assert "cannot mount the container rootfs" in message
    assert "overlay" in message and "lowerdir=/nonexistent/lower" in message
    assert mounted_under(str(bundle)) == []
    exec_answers(cd, cid)


def test_a_missing_bind_source_is_named(running):
    cd, cid, address, base = running
    bundle = bundle_with(base, spec(mounts=[
        {"destination": "/data", "type": "bind", "source": "/nonexistent/data",
         "options": ["rbind", "rw"]}]))
    code, message = error_of(address, "Create", api.CreateTaskRequest(
        id="no-bind-source", bundle=str(bundle)))
    assert (code, message) == (
        Code.INVALID_ARGUMENT, "bind mount source /nonexistent/data does not exist")
    exec_answers(cd, cid)


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "is not valid JSON"),
    (json.dumps(spec(annotations={"pad": "x" * (16 << 20)})).encode(), "larger than 2 MiB"),
    (json.dumps({"process": {"args": ["true"]}}).encode(), "has no 'root' object"),
])
def test_a_bad_config_json_in_a_running_pod_is_refused(running, body, words):
    cd, cid, address, base = running
    bundle = bundle_with(base, body)
    code, message = error_of(address, "Create", api.CreateTaskRequest(
        id=f"bad-{uuid.uuid4().hex[:6]}", bundle=str(bundle)))
    assert code == Code.INVALID_ARGUMENT
    assert words in message and str(bundle / "config.json") in message
    exec_answers(cd, cid)


@pytest.mark.parametrize("bad_id", ["a/b", "..", "nul\x00id", "x" * 300])
def test_ids_a_path_could_escape_with_are_refused(running, bad_id):
    _, _, address, base = running
    for method, request in (
        ("Create", api.CreateTaskRequest(id=bad_id, bundle=str(bundle_with(base, spec())))),
        ("State", api.StateRequest(id=bad_id)),
        ("Kill", api.KillRequest(id=bad_id, signal=9)),
        ("Delete", api.DeleteRequest(id=bad_id)),
    ):
        code, message = error_of(address, method, request)
        assert code == Code.INVALID_ARGUMENT, (method, message)
        assert "container id" in message


def test_an_unknown_method_is_unimplemented(running):
    _, _, address, _ = running

    async def go():
        client = await ttrpc.Client.connect(address)
        try:
            return await client.call(TASK_SERVICE, "Teleport", b"", timeout=30)
        finally:
            await client.close()

    with pytest.raises(ttrpc.TTRPCError) as caught:
        asyncio.run(go())
    assert caught.value.code == Code.UNIMPLEMENTED
    assert "Teleport" in caught.value.message


def _hostile_frames(address: str, seed: int, count: int) -> int:
    """Send `count` random, truncated and malformed frames; reconnect when dropped."""
    rng = random.Random(seed)
    sent = 0
    sock = None
    stream = 1
    while sent < count:
        if sock is None:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(address)
            sock.setblocking(False)
            stream = 1
        kind = rng.random()
        if kind < 0.3:  # noise
            blob = rng.randbytes(rng.randrange(1, 256))
        elif kind < 0.5:  # a header that promises more than comes
            blob = encode_header(rng.randrange(1, 4096), stream, TYPE_REQUEST)
            blob += rng.randbytes(rng.randrange(0, 16))
        elif kind < 0.6:  # a length over the 4 MiB limit
            blob = encode_header((4 << 20) + rng.randrange(1, 1 << 20), stream, TYPE_REQUEST)
        elif kind < 0.7:  # a response frame a client must never send
            blob = encode_frame(stream, TYPE_RESPONSE, rng.randbytes(8))
        else:  # a request whose envelope or payload is mangled
            method = rng.choice(["State", "Create", "Kill", "Nope"])
            envelope = Request(service=TASK_SERVICE, method=method, payload=rng.randbytes(24))
            data = bytearray(envelope.SerializeToString())
            for _ in range(rng.randrange(0, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blob = encode_frame(stream, TYPE_REQUEST, bytes(data))
        stream += 2
        try:
            _send(sock, blob)
        except OSError:  # the shim dropped this connection: a new one for the next frame
            sock.close()
            sock = None
            continue
        sent += 1
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        if rng.random() < 0.02:  # cut the connection mid-frame now and then
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return sent


def _send(sock: socket.socket, blob: bytes) -> None:
    """Send all of blob on a non-blocking socket, reading (and dropping) answers meanwhile."""
    view = memoryview(blob)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            try:
                sock.recv(65536)
            except BlockingIOError:
                threading.Event().wait(0.001)


def test_ten_thousand_hostile_frames_leave_the_pod_serving(running):
    cd, cid, address, _ = running
    counts: list[int] = []
    share = HOSTILE_FRAMES // HOSTILE_CONNECTIONS

    def peer(seed: int) -> None:
        counts.append(_hostile_frames(address, seed, share))

    threads = [threading.Thread(target=peer, args=(s,)) for s in range(HOSTILE_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sum(counts) == HOSTILE_FRAMES
    state = call(address, "State", api.StateRequest(id=cid))
    assert state.status == 2  # RUNNING
    exec_answers(cd, cid)
