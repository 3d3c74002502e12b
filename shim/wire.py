"""Just enough of the protobuf wire format to write the short replies of `delete` and `-info`.

containerd runs those actions as separate processes, often; importing protobuf
would cost each of them more than all the rest of its work.
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    """A base-128 varint (non-negative values)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def varint_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0); proto3 leaves zero out."""
    return varint(number << 3) + varint(value) if value else b""


def bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): bytes, strings, messages."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
