"""The event publisher: order, envelope contents, retries while containerd is away."""

import asyncio

import ttrpc
from protos.containerd.events import task_pb2 as events
from protos.containerd.services.events.ttrpc.v1 import events_pb2
from shim.task_service.events import EVENTS, EventPublisher


class Recorder:
    """Stands where containerd's events service stands: records what it is sent."""

    def __init__(self):
        self.envelopes = []
        self.namespaces = []

    async def Forward(self, request, context):
        self.envelopes.append(request.envelope)
        self.namespaces.append(context.get("containerd-namespace-ttrpc"))
        return None


async def serve(path):
    recorder = Recorder()
    server = ttrpc.Server()
    server.register(EVENTS, recorder)
    await server.serve_unix(path)
    return server, recorder


async def wait_for(predicate, seconds=10.0):
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_events_arrive_in_order_with_bare_type_urls(tmp_path):
    path = str(tmp_path / "events.sock")
    server, recorder = await serve(path)
    publisher = EventPublisher(path, "ns1")
    publisher.publish("/tasks/create", events.TaskCreate(container_id="c1", pid=7))
    publisher.publish("/tasks/start", events.TaskStart(container_id="c1", pid=7))
    publisher.publish("/tasks/exit", events.TaskExit(container_id="c1", id="c1", exit_status=3))
    await publisher.close()
    await server.shutdown()
    assert [e.topic for e in recorder.envelopes] == ["/tasks/create", "/tasks/start", "/tasks/exit"]
    assert all(e.namespace == "ns1" for e in recorder.envelopes)
    assert recorder.namespaces == ["ns1"] * 3
    exit_any = recorder.envelopes[2].event
    assert exit_any.type_url == "containerd.events.TaskExit"
    assert events.TaskExit.FromString(exit_any.value).exit_status == 3
    assert recorder.envelopes[0].timestamp.seconds > 0


async def test_events_are_retried_until_containerd_is_back(tmp_path):
    path = str(tmp_path / "late.sock")
    publisher = EventPublisher(path, "ns1")
    publisher.publish("/tasks/oom", events.TaskOOM(container_id="c1"))
    await asyncio.sleep(0.3)  # first attempt fails: nobody listens yet
    server, recorder = await serve(path)
    await wait_for(lambda: recorder.envelopes)
    await publisher.close()
    await server.shutdown()
    assert recorder.envelopes[0].topic == "/tasks/oom"
    assert publisher.published == ["/tasks/oom"]


async def test_no_address_means_no_publishing():
    publisher = EventPublisher("", "ns1")
    publisher.publish("/tasks/start", events.TaskStart(container_id="c1"))
    await publisher.close()
    assert publisher.published == []


def test_envelope_field_numbers():
    fields = {f.name: f.number for f in events_pb2.Envelope.DESCRIPTOR.fields}
    assert fields == {"timestamp": 1, "namespace": 2, "topic": 3, "event": 4}
