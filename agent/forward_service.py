"""pykata.PortForward: the handlers of the port-forward calls (agent.forward does the work)."""

from __future__ import annotations

from google.protobuf.empty_pb2 import Empty

from agent.forward import MAX_PORTS, ForwardError, Forwards
from protos.pykata import forward_pb2 as pb
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

CODES = {
    "invalid": Code.INVALID_ARGUMENT,
    "not_found": Code.NOT_FOUND,
    "exhausted": Code.RESOURCE_EXHAUSTED,
    "unavailable": Code.UNAVAILABLE,
}


def _refused(error: ForwardError) -> TTRPCError:
    return TTRPCError(CODES[error.kind], str(error))


class PortForwardService:
    def __init__(self, forwards: Forwards) -> None:
        self.forwards = forwards

    async def WatchListeners(self, request: pb.WatchListenersRequest, context: object) -> object:
        known = set(list(request.known)[:MAX_PORTS])
        ports = await self.forwards.watch(known, request.wait_ms / 1000)
        return pb.Listeners(ports=ports)

    async def DialPort(self, request: pb.DialPortRequest, context: object) -> object:
        try:
            return pb.DialPortResponse(connection=await self.forwards.dial(request.port))
        except ForwardError as error:
            raise _refused(error) from None

    async def ReadPort(self, request: pb.ReadPortRequest, context: object) -> object:
        try:
            return pb.PortData(data=await self.forwards.read(request.connection, request.len))
        except ForwardError as error:
            raise _refused(error) from None

    async def WritePort(self, request: pb.WritePortRequest, context: object) -> object:
        try:
            written = await self.forwards.write(request.connection, request.data, request.eof)
        except ForwardError as error:
            raise _refused(error) from None
        return pb.WritePortResponse(len=written)

    async def ClosePort(self, request: pb.ClosePortRequest, context: object) -> Empty:
        await self.forwards.close(request.connection)
        return Empty()
