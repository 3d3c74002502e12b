"""The one error type of ttrpc: a gRPC status code and a message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttrpc.codes import Code


class TTRPCError(Exception):
    """A call failed with a status.

    Handlers raise it to answer with that status; clients receive it when the
    peer answered with a status other than OK, or when the call could not be
    made (connection closed, deadline passed, message too large).
    """

    def __init__(self, code: Code | int, message: str = "", details: Sequence[Any] = ()) -> None:
        self.code = Code.of(int(code))
        self.message = message
        self.details = list(details)
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)

    def __reduce__(self):  # keep the error picklable
        return (type(self), (int(self.code), self.message, self.details))


class ProtocolError(Exception):
    """The byte stream broke the framing rules; the connection must be closed."""
