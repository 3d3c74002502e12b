"""Call observers on the ttrpc server and client, and the RPC histograms they feed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import ECHO, ECHO_SERVICE, BytesValue, EchoService, bytes_value, parse_value

import ttrpc
from protos.kata import agent_pb2, health_pb2
from pykata_common.exposition import render
from shim.monitor.rpc_metrics import (
    AGENT_FAMILY,
    BUCKETS_MS,
    MAX_ACTIONS,
    TASK_FAMILY,
    DurationHistogram,
    RpcMetrics,
    request_names,
    task_action,
)
from ttrpc import Code, TTRPCError


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, Code]] = []

    def __call__(self, service: str, method: str, seconds: float, code: Code) -> None:
        self.calls.append((service, method, seconds, code))

    @property
    def seen(self) -> list[tuple[str, str, Code]]:
        return [(s, m, c) for s, m, _, c in self.calls]


async def wait_for_calls(recorder: Recorder, count: int) -> None:
    for _ in range(200):
        if len(recorder.calls) >= count:
            return
        await asyncio.sleep(0.01)


@pytest.fixture
async def observed(tmp_path):
    recorder = Recorder()
    service = EchoService()
    server = ttrpc.Server(observer=recorder)
    server.register(ECHO, service)
    address = f"unix://{tmp_path}/observed.sock"
    await server.serve_unix(address)
    client = await ttrpc.Client.connect(address)
    yield server, client, recorder, service
    await client.close()
    await server.shutdown(grace=1.0)


async def test_server_reports_each_answered_call_with_its_code(observed):
    _, client, recorder, _ = observed
    assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(b"hi"))) == b"hi"
    for method, payload in (("Fail", b""), ("Crash", b""), ("Echo", b"\xff\xff\xff")):
        with pytest.raises(TTRPCError):
            await client.call(ECHO_SERVICE, method, payload)
    assert recorder.seen == [
        (ECHO_SERVICE, "Echo", Code.OK),
        (ECHO_SERVICE, "Fail", Code.NOT_FOUND),
        (ECHO_SERVICE, "Crash", Code.UNKNOWN),
        (ECHO_SERVICE, "Echo", Code.INVALID_ARGUMENT),
    ]
    assert all(isinstance(code, Code) for *_, code in recorder.calls)
    assert all(0 <= seconds < 5 for _, _, seconds, _ in recorder.calls)


async def test_server_reports_the_duration_and_deadlines(observed):
    _, client, recorder, _ = observed
    await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"0.05"))
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"5"), timeout=0.05)
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    await wait_for_calls(recorder, 2)  # the server's own deadline fires just after the client's
    (_, _, slept, ok), (_, _, _, late) = recorder.calls
    assert slept >= 0.05 and ok == Code.OK
    assert late == Code.DEADLINE_EXCEEDED


async def test_unknown_services_and_methods_are_not_reported(observed):
    _, client, recorder, _ = observed
    for service, method in (("no.such.Service", "Echo"), (ECHO_SERVICE, "Nope")):
        with pytest.raises(TTRPCError):
            await client.call(service, method, b"")
    # declared in the service but not implemented: not registered either
    with pytest.raises(TTRPCError):
        await client.call(ECHO_SERVICE, "Missing", b"")
    assert recorder.calls == []


async def test_a_call_cut_short_is_reported_cancelled(observed):
    _, client, recorder, service = observed
    call = asyncio.create_task(client.call(ECHO_SERVICE, "Sleep", bytes_value(b"10")))
    while service.started == 0:
        await asyncio.sleep(0.01)
    await client.close()
    with pytest.raises(TTRPCError):
        await call
    await wait_for_calls(recorder, 1)
    assert recorder.seen == [(ECHO_SERVICE, "Sleep", Code.CANCELLED)]


async def test_a_failing_server_observer_is_logged_and_the_call_still_answered(tmp_path, caplog):
    def broken(*args):
        raise RuntimeError("observer bug")

    server = ttrpc.Server(observer=broken)
    server.register(ECHO, EchoService())
    address = f"unix://{tmp_path}/broken.sock"
    await server.serve_unix(address)
    caplog.set_level(logging.ERROR, logger="ttrpc")
    async with await ttrpc.Client.connect(address) as client:
        assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(b"x"))) == b"x"
        assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(b"y"))) == b"y"
    await server.shutdown(grace=1.0)
    assert any("observer failed" in r.getMessage() for r in caplog.records)


async def test_client_reports_calls_and_how_they_ended(server):
    _, address = server
    recorder = Recorder()
    client = await ttrpc.Client.connect(address, observer=recorder)
    await ttrpc.Stub(client, ECHO).Echo(BytesValue(value=b"a"))
    with pytest.raises(TTRPCError):
        await client.call(ECHO_SERVICE, "Fail", b"")
    with pytest.raises(TTRPCError):
        await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"5"), timeout=0.02)
    with pytest.raises(TTRPCError):
        await client.call(ECHO_SERVICE, "Nope", b"")
    await client.close()
    with pytest.raises(TTRPCError):
        await client.call(ECHO_SERVICE, "Echo", b"")
    assert recorder.seen == [
        (ECHO_SERVICE, "Echo", Code.OK),
        (ECHO_SERVICE, "Fail", Code.NOT_FOUND),
        (ECHO_SERVICE, "Sleep", Code.DEADLINE_EXCEEDED),
        (ECHO_SERVICE, "Nope", Code.UNIMPLEMENTED),
        (ECHO_SERVICE, "Echo", Code.UNAVAILABLE),
    ]
    assert recorder.calls[2][2] >= 0.02


async def test_client_reports_a_cancelled_call_and_survives_a_broken_observer(server, caplog):
    _, address = server
    recorder = Recorder()
    client = await ttrpc.Client.connect(address, observer=recorder)
    call = asyncio.create_task(client.call(ECHO_SERVICE, "Sleep", bytes_value(b"10")))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert recorder.seen == [(ECHO_SERVICE, "Sleep", Code.CANCELLED)]
    await client.close()

    def broken(*args):
        raise RuntimeError("observer bug")

    caplog.set_level(logging.ERROR, logger="ttrpc")
    async with await ttrpc.Client.connect(address, observer=broken) as other:
        assert parse_value(await other.call(ECHO_SERVICE, "Echo", bytes_value(b"z"))) == b"z"
    assert any("observer failed" in r.getMessage() for r in caplog.records)


# -- the histograms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("Create", "create"),
        ("CloseIO", "close_io"),
        ("ResizePty", "resize_pty"),
        ("Shutdown", "shutdown"),
        ("CreateSandbox", "create_sandbox"),
    ],
)
def test_task_actions_are_katas_snake_case(method, action):
    assert task_action(method) == action


def test_agent_actions_are_request_message_names():
    names = request_names(
        [
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
        ]
    )
    assert names[("grpc.AgentService", "CreateContainer")] == "grpc.CreateContainerRequest"
    assert names[("grpc.AgentService", "WriteStdin")] == "grpc.WriteStreamRequest"
    assert names[("grpc.Health", "Version")] == "grpc.CheckRequest"
    metrics = RpcMetrics(names)
    metrics.observe_agent("grpc.AgentService", "CreateContainer", 0.003, Code.OK)
    metrics.observe_agent("grpc.Other", "Thing", 0.003, Code.OK)
    text = render(metrics.families())
    assert f"# TYPE {AGENT_FAMILY} histogram" in text
    assert f'{AGENT_FAMILY}_count{{action="grpc.CreateContainerRequest"}} 1' in text
    assert f'{AGENT_FAMILY}_count{{action="grpc.Other.Thing"}} 1' in text


def test_buckets_are_katas_and_bounds_are_inclusive():
    assert BUCKETS_MS == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    histogram = DurationHistogram("h_ms", "H.")
    for seconds in (0.0004, 0.001, 0.002, 0.0021, 0.6, 3.0):
        histogram.observe("create", seconds)
    family = histogram.family()
    assert family is not None
    buckets = {dict(s.labels)["le"]: s.value for s in family.samples if s.suffix == "_bucket"}
    assert buckets["1"] == 2 and buckets["2"] == 3 and buckets["4"] == 4
    assert buckets["512"] == 4 and buckets["+Inf"] == 6
    total = next(s.value for s in family.samples if s.suffix == "_sum")
    assert total == pytest.approx(0.4 + 1 + 2 + 2.1 + 600 + 3000)
    assert histogram.count("create") == 6 and histogram.count("other") == 0


def test_no_family_before_the_first_call_and_a_bounded_label_set():
    metrics = RpcMetrics()
    assert metrics.families() == []
    for i in range(MAX_ACTIONS + 10):
        metrics.task.observe(f"a{i}", 0.001)
    family = metrics.task.family()
    assert family is not None
    assert len({dict(s.labels)["action"] for s in family.samples}) == MAX_ACTIONS


async def test_server_observer_feeds_the_task_histogram(tmp_path):
    metrics = RpcMetrics()
    server = ttrpc.Server(observer=metrics.observe_task)
    server.register(ECHO, EchoService())
    address = f"unix://{tmp_path}/metrics.sock"
    await server.serve_unix(address)
    async with await ttrpc.Client.connect(address) as client:
        for _ in range(3):
            await client.call(ECHO_SERVICE, "Echo", b"")
        with pytest.raises(TTRPCError):
            await client.call(ECHO_SERVICE, "Fail", b"")
    await server.shutdown(grace=1.0)
    text = render(metrics.families())
    assert f"# TYPE {TASK_FAMILY} histogram" in text
    assert f'{TASK_FAMILY}_bucket{{action="echo",le="+Inf"}} 3' in text
    assert f'{TASK_FAMILY}_count{{action="fail"}} 1' in text
