"""gRPC status codes, as ttrpc carries them in google.rpc.Status.code."""

from enum import IntEnum


class Code(IntEnum):
    """The canonical gRPC status codes (same numbers on the wire)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> "Code":
        """The Code for a wire value; unknown values become UNKNOWN."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN
