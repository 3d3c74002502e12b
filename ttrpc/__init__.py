"""ttrpc for Python: containerd's lightweight RPC protocol over asyncio.

`import ttrpc` is cheap: the client, server and protobuf parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "MAX_MESSAGE_SIZE",
    "CallContext",
    "Client",
    "Code",
    "Server",
    "Stub",
    "TTRPCError",
    "require_same_uid",
]

_LAZY = {
    "Code": "ttrpc.codes",
    "TTRPCError": "ttrpc.errors",
    "MAX_MESSAGE_SIZE": "ttrpc.framing",
    "Client": "ttrpc.client",
    "Server": "ttrpc.server",
    "Stub": "ttrpc.service",
    "CallContext": "ttrpc.service",
    "require_same_uid": "ttrpc.transport",
}

if TYPE_CHECKING:
    from ttrpc.client import Client
    from ttrpc.codes import Code
    from ttrpc.errors import TTRPCError
    from ttrpc.framing import MAX_MESSAGE_SIZE
    from ttrpc.server import Server
    from ttrpc.service import CallContext, Stub
    from ttrpc.transport import require_same_uid


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ttrpc' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
