"""Frame encoding and the incremental decoder."""

import random

import pytest

from ttrpc.errors import ProtocolError
from ttrpc.framing import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    FrameDecoder,
    encode_frame,
    encode_header,
    oversized_message,
)


class Collector:
    def __init__(self):
        self.frames = []
        self.oversized = []
        self.decoder = FrameDecoder(
            lambda *f: self.frames.append(f), lambda *o: self.oversized.append(o)
        )


def test_header_layout_is_big_endian_length_stream_type_flags():
    assert encode_header(0x01020304, 0x0A0B0C0D, TYPE_RESPONSE, 0x05) == bytes(
        [1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D, 2, 5]
    )
    assert HEADER_SIZE == 10
    assert MAX_MESSAGE_SIZE == 4 * 1024 * 1024


def test_round_trip_whole_and_byte_by_byte():
    frames = [
        (1, TYPE_REQUEST, 0, b"hello"),
        (3, TYPE_REQUEST, 0, b""),
        (3, TYPE_DATA, 1, b"\x00" * 1000),
        (2, TYPE_RESPONSE, 0, bytes(range(256))),
    ]
    stream = b"".join(encode_frame(s, t, d, f) for s, t, f, d in frames)
    expected = [(s, t, f, d) for s, t, f, d in frames]

    whole = Collector()
    whole.decoder.feed(stream)
    assert whole.frames == expected
    assert not whole.decoder.mid_frame

    drip = Collector()
    for i in range(len(stream)):
        drip.decoder.feed(stream[i : i + 1])
    assert drip.frames == expected


def test_random_chunking_keeps_frames_intact():
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 5000)) for _ in range(50)]
    stream = b"".join(encode_frame(2 * i + 1, TYPE_REQUEST, p) for i, p in enumerate(payloads))
    got = Collector()
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 3000)
        got.decoder.feed(stream[pos : pos + step])
        pos += step
    assert [f[3] for f in got.frames] == payloads


def test_oversized_frame_is_skipped_without_losing_sync():
    too_big = MAX_MESSAGE_SIZE + 1
    stream = (
        encode_header(too_big, 5, TYPE_REQUEST)
        + b"\xaa" * too_big
        + encode_frame(7, TYPE_REQUEST, b"after")
    )
    got = Collector()
    for pos in range(0, len(stream), 65536):
        got.decoder.feed(stream[pos : pos + 65536])
    assert got.oversized == [(5, TYPE_REQUEST, too_big)]
    assert got.frames == [(7, TYPE_REQUEST, 0, b"after")]


def test_unknown_frame_type_is_a_protocol_error():
    got = Collector()
    with pytest.raises(ProtocolError, match="unknown frame type 9"):
        got.decoder.feed(encode_header(0, 1, 9))


def test_partial_frame_is_reported_as_mid_frame():
    got = Collector()
    got.decoder.feed(encode_frame(1, TYPE_REQUEST, b"abcdef")[:12])
    assert got.decoder.mid_frame
    assert got.frames == []


def test_oversized_message_text_matches_go_ttrpc():
    assert oversized_message(4194305) == (
        "message length 4194305 exceed maximum message size of 4194304"
    )
