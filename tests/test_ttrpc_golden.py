"""Golden bytes: the Request envelope and its frame, derived by hand from the spec.

How the vector was derived (protobuf wire format, fields written in field-number
order, as Go's generated marshalers and Python's both do):

    Request{service="svc" (1), method="Do" (2), payload=0x01 0x02 (3),
            timeout_nano=1000000000 (4), metadata=[{key="k", value="v"}] (5)}

    field 1, wire type 2 (bytes): tag (1<<3)|2 = 0x0a, len 3, "svc" = 73 76 63
    field 2, wire type 2:         tag (2<<3)|2 = 0x12, len 2, "Do"  = 44 6f
    field 3, wire type 2:         tag (3<<3)|2 = 0x1a, len 2, 01 02
    field 4, wire type 0 (varint): tag (4<<3)|0 = 0x20, 1000000000 as base-128
        varint, low groups first: 1000000000 = 0x3B9ACA00
        7-bit groups (low to high): 0x00, 0x14, 0x6b, 0x5c, 0x03
        -> 80 94 eb dc 03
    field 5, wire type 2:         tag (5<<3)|2 = 0x2a, len 6, KeyValue:
        0a 01 6b (key "k"), 12 01 76 (value "v")

Frame: length 0x1b (5 + 4 + 4 + 6 + 8 = 27 bytes), stream id 1, type 1 (request), flags 0:
    00 00 00 1f | 00 00 00 01 | 01 | 00
"""

from ttrpc.framing import TYPE_REQUEST, TYPE_RESPONSE, encode_frame
from ttrpc.pb.request_pb2 import KeyValue, Request, Response
from ttrpc.pb.status_pb2 import Status

REQUEST_BYTES = bytes.fromhex(
    "0a03737663"  # service
    "1202446f"  # method
    "1a020102"  # payload
    "208094ebdc03"  # timeout_nano
    "2a060a016b120176"  # metadata
)
FRAME_HEADER = bytes.fromhex("0000001b000000010100")


def golden_request() -> Request:
    return Request(
        service="svc",
        method="Do",
        payload=b"\x01\x02",
        timeout_nano=1_000_000_000,
        metadata=[KeyValue(key="k", value="v")],
    )


def test_request_encodes_to_the_hand_derived_bytes():
    assert golden_request().SerializeToString() == REQUEST_BYTES
    assert len(REQUEST_BYTES) == 0x1B


def test_request_frame_encodes_to_the_hand_derived_bytes():
    frame = encode_frame(1, TYPE_REQUEST, golden_request().SerializeToString())
    assert frame == FRAME_HEADER + REQUEST_BYTES


def test_request_decodes_from_the_hand_derived_bytes():
    assert Request.FromString(REQUEST_BYTES) == golden_request()


def test_error_response_bytes():
    # Response{status=Status{code=5, message="x"}}:
    #   field 1 (status), wire type 2: 0a, len 5, Status: 08 05 (code), 12 01 78 (message)
    response = Response(status=Status(code=5, message="x"))
    assert response.SerializeToString() == bytes.fromhex("0a050805120178")
    frame = encode_frame(1, TYPE_RESPONSE, response.SerializeToString())
    assert frame[:10] == bytes.fromhex("00000007000000010200")


def test_empty_message_is_zero_bytes():
    assert Request().SerializeToString() == b""
    assert Response.FromString(b"") == Response()
