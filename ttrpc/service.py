"""Services from protobuf descriptors: method tables for servers, typed stubs for clients."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

Metadata = Mapping[str, str | list[str] | tuple[str, ...]]


# Plain classes with slots rather than dataclasses: a dataclass compiles its methods
# at import, and a VM's agent imports this on every boot (~20 ms under TCG).
class CallContext:
    """What a handler knows about the call besides its request."""

    __slots__ = ("metadata", "method", "service", "stream_id", "timeout")

    def __init__(
        self,
        service: str,
        method: str,
        stream_id: int,
        metadata: dict[str, list[str]] | None = None,
        timeout: float | None = None,  # seconds, as the caller asked; None = no deadline
    ) -> None:
        self.service = service
        self.method = method
        self.stream_id = stream_id
        self.metadata = {} if metadata is None else metadata
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"CallContext({self.service}/{self.method}, stream {self.stream_id})"

    def get(self, key: str, default: str | None = None) -> str | None:
        """First value of a metadata key (keys are lower-case)."""
        values = self.metadata.get(key.lower())
        return values[0] if values else default


Handler = Callable[[Message, CallContext], Awaitable[Message | None]]


class Method:
    """One registered method: how to parse its request, build its answer, and run it."""

    __slots__ = ("handler", "name", "request_type", "response_type")

    def __init__(
        self,
        name: str,
        request_type: type[Message],
        response_type: type[Message],
        handler: Handler,
    ) -> None:
        self.name = name
        self.request_type = request_type
        self.response_type = response_type
        self.handler = handler


def message_class(descriptor: Any) -> type[Message]:
    """The generated class for a message descriptor."""
    return message_factory.GetMessageClass(descriptor)


def methods_of(service: ServiceDescriptor, implementation: object) -> dict[str, Method]:
    """Bind each method of a service descriptor to the coroutine of the same name.

    A method the implementation lacks is left out, so callers get UNIMPLEMENTED
    for it, as from a server that does not know it.
    """
    table: dict[str, Method] = {}
    for method in service.methods:
        handler = getattr(implementation, method.name, None)
        if handler is None:
            continue
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{service.full_name}/{method.name}: handler must be `async def`")
        table[method.name] = Method(
            name=method.name,
            request_type=message_class(method.input_type),
            response_type=message_class(method.output_type),
            handler=handler,
        )
    return table


class Stub:
    """Typed client calls for one service: `await stub.Method(request, timeout=...)`."""

    def __init__(self, client: Any, service: ServiceDescriptor) -> None:
        self._client = client
        self.service_name = service.full_name
        for method in service.methods:
            setattr(self, method.name, self._make_call(method))

    def _make_call(self, method: Any) -> Callable[..., Awaitable[Message]]:
        client = self._client
        service_name = self.service_name
        method_name = method.name
        response_type = message_class(method.output_type)

        async def call(
            request: Message,
            *,
            timeout: float | None = None,
            metadata: Metadata | None = None,
        ) -> Message:
            payload = await client.call(
                service_name,
                method_name,
                request.SerializeToString(),
                timeout=timeout,
                metadata=metadata,
            )
            return response_type.FromString(payload)

        call.__name__ = method_name
        call.__qualname__ = f"{service_name}.{method_name}"
        return call
